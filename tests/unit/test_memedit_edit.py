"""The edit stage's judgement of `memory_edit.sh -c` output, on captured outputs and a scripted transport
(any command it was not told about fails the test)."""

import json
from pathlib import Path

import pytest

from provision.inventory.hosts import Host
from provision.memory.apply import ApplyFailed, _Box, edit
from provision.memory.layout import Layout
from provision.ssh.transport import Result

FIXTURES = Path(__file__).parent.parent / "facts" / "memory_edit_c"
OLD_SHA = "0" * 64
NEW_SHA = "1" * 64
TARGET = Layout(7615, 3071, 3071)


def captured(name):
    return json.loads((FIXTURES / f"{name}.json").read_text())["output"]


class Scripted:
    """Answers by the first (substring, stdout, exit) whose substring is in the command."""

    def __init__(self, answers):
        self.host = Host("se7-1", "10.0.0.1")
        self.answers = answers
        self.commands = []

    def run(self, command, *, sudo=False, timeout=None, check=True, stdin=None):
        text = command if isinstance(command, str) else " ".join(command)
        self.commands.append(text)
        for needle, stdout, code in self.answers:
            if needle in text:
                return Result(text, code, stdout, "", 0.0)
        raise AssertionError(f"unscripted command: {text}")


def box(output, code=0, new_sha=NEW_SHA):
    transport = Scripted(
        [
            ("memory_edit.sh -c", output, code),
            ("sha256sum -- /boot/emmcboot.itb", f"{OLD_SHA}  /boot/emmcboot.itb\n", 0),
            ("sha256sum -- /data/sophon-fleet/memory_edit/emmcboot.itb", f"{new_sha}  x\n", 0),
        ]
    )
    run = _Box(transport, progress=lambda *a: None, cancel=None)
    run.old_sha = OLD_SHA
    return run


def test_a_clean_run_yields_the_new_image_and_its_sha():
    run = box(captured("se7_v2_12_recommended"))
    assert (
        edit(run, '"/data/sophon-fleet/memory_edit"', TARGET) == "/data/sophon-fleet/memory_edit/emmcboot.itb"
    )
    assert run.new_sha == NEW_SHA


@pytest.mark.parametrize(
    ("fixture", "code", "message"),
    [
        ("over_max_npu", 255, "Error: npu size 0x1dc000000 error"),
        ("en_emmcfile_failed", 255, "Error: en_emmcfile"),
        ("truncated_before_checks", 0, "printed no `check … size` lines"),
        ("garbage", 127, "not memory_edit.sh output"),
        ("se7_v2_10_2048", 0, "checked 2048/2048/2048, not the requested 7615/3071/3071"),
    ],
)
def test_anything_but_a_clean_run_aborts_with_boot_verified_unchanged(fixture, code, message):
    run = box(captured(fixture), code)
    with pytest.raises(ApplyFailed) as caught:
        edit(run, '"/data/sophon-fleet/memory_edit"', TARGET)
    assert message in caught.value.message and "/boot is unchanged" in caught.value.message
    assert caught.value.image == "old"
    assert not any(" mv " in c or "cp " in c for c in run.t.commands if "memory_edit.sh" not in c)


def test_a_run_that_prints_ok_but_exits_non_zero_is_not_trusted():
    run = box(captured("se7_v2_12_recommended"), code=1)
    with pytest.raises(ApplyFailed, match="did not finish"):
        edit(run, '"/data/sophon-fleet/memory_edit"', TARGET)


def test_an_image_identical_to_the_current_one_is_refused():
    run = box(captured("se7_v2_12_recommended"), new_sha=OLD_SHA)
    with pytest.raises(ApplyFailed, match="wrote no new image"):
        edit(run, '"/data/sophon-fleet/memory_edit"', TARGET)
