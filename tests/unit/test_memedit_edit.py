"""The edit stage's judgement of `memory_edit.sh -c` output, on captured outputs and a scripted transport
(any command it was not told about fails the test)."""

import json
import re
from pathlib import Path

import pytest

from provision.memory.apply import ApplyFailed, _Box, edit
from provision.memory.layout import Layout
from tests.fakes import Reply, ScriptedTransport

FIXTURES = Path(__file__).parent.parent / "facts" / "memory_edit_c"
OLD_SHA = "0" * 64
NEW_SHA = "1" * 64
TARGET = Layout(7615, 3071, 3071)


def captured(name):
    return json.loads((FIXTURES / f"{name}.json").read_text())["output"]


def box(output, code=0, new_sha=NEW_SHA):
    transport = ScriptedTransport(
        [
            Reply(re.escape("memory_edit.sh -c"), output, exit_code=code),
            Reply(re.escape("sha256sum -- /boot/emmcboot.itb"), f"{OLD_SHA}  /boot/emmcboot.itb\n"),
            Reply(re.escape("sha256sum -- /data/sophon-fleet/memory_edit/emmcboot.itb"), f"{new_sha}  x\n"),
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
