"""Every SSH read and write has a deadline, even when the socket blocks.

A link cut (`link-down`, and never `link-up` until the command has returned) must end in a clear report
within the connect timeout plus the default idle bound (<= 60 s), with the box named unreachable. The cut is
made when the stage under test is under way (awaited on the box or in the progress output), never after a
blind sleep.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from provision.cli.main import cli
from provision.ssh.transport import Timeouts
from tests.sim.conftest import needs_root
from tests.sim.flows import pull_pinned_standins

pytestmark = [pytest.mark.sim, needs_root]

CONNECT_TIMEOUT = 2.0
BOUND = CONNECT_TIMEOUT + 60.0  # the bound: connect timeout + at most 60 s idle by default


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout


class CutWhen:
    """A thread that cuts `name`'s link once `ready()` holds (polled), and records when it did."""

    def __init__(self, fleet, name: str, ready, timeout: float = 60.0) -> None:
        self.fleet, self.name, self.ready, self.timeout = fleet, name, ready, timeout
        self.at: float | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.ready():
                self.fleet.fault(self.name, "link-down")
                self.at = time.monotonic()
                return
            time.sleep(0.02)

    def __enter__(self) -> CutWhen:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join()
        if self.at is not None:
            self.fleet.fault(self.name, "link-up")


@pytest.fixture
def pulled(tmp_path):
    return pull_pinned_standins(tmp_path, bmodel_size=24 << 20)


def test_the_default_idle_bound_is_at_most_60_s():
    assert Timeouts().idle <= 60


def test_a_link_cut_mid_push_is_reported_unreachable_within_the_bound(sim_fleet, pulled):
    fleet = sim_fleet(["se7-factory", "se7-factory"])
    fleet.fault("se7-2", "rate", "40")  # 5 MB/s: the 24 MiB bmodel takes ~5 s, the cut lands mid-file
    data = fleet.state.box_paths("se7-2").data
    parts = lambda: list(data.glob("sophon-fleet/models/*/int4/*.bmodel.part"))  # noqa: E731

    def mid_file() -> bool:
        return any(p.stat().st_size >= 4 << 20 for p in parts())

    with CutWhen(fleet, "se7-2", mid_file) as cut:
        code, out = invoke(
            "assets", "push", "-i", str(fleet.inventory_path), "-m", str(pulled), "--variant", "int4",
            "--connect-timeout", str(CONNECT_TIMEOUT), "--json",
        )  # fmt: skip
        returned = time.monotonic()
    assert cut.at is not None, "the push never reached the middle of the file"
    assert returned - cut.at <= BOUND, f"reported {returned - cut.at:.1f} s after the cut"
    assert code == 4, out
    boxes = {b["host"]: b for b in json.loads(out)["boxes"]}
    assert boxes["se7-1"]["result"] == "pushed"
    assert boxes["se7-2"]["result"] == "failed" and "se7-2" in boxes["se7-2"]["error"], boxes["se7-2"]


def kit_path(tmp_path: Path) -> str:
    from sim import kit_archive

    return str(kit_archive.build_kit(tmp_path / "kit").tarball)


def test_a_link_cut_during_edit_is_reported_with_boot_untouched_and_runnable_advice(sim_fleet, tmp_path):
    """`memedit-slow` holds the `edit` stage; the link is cut once the CLI shows that stage.
    The report comes within the bound, says /boot was not touched, and its advice runs as printed: it
    names the lock this run could not remove and the command (with --break-lock) that clears it."""
    import shlex
    import subprocess
    import sys

    fleet = sim_fleet(["se7-factory"])
    fleet.fault("se7-1", "memedit-slow")
    before = fleet.state.box_paths("se7-1").boot_image.read_bytes()
    exe = str(Path(sys.executable).with_name("sophon-fleet"))
    command = [exe, "memory", "apply", "-i", str(fleet.inventory_path), "--kit", kit_path(tmp_path), "--yes"]
    command += ["--connect-timeout", str(CONNECT_TIMEOUT), "--reboot-timeout", "15"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.split()[1:2] == ["edit"]:
                break
        else:
            raise AssertionError(f"no edit stage in: {''.join(seen)}")
        fleet.fault("se7-1", "link-down")
        cut = time.monotonic()
        out, err = proc.communicate(timeout=BOUND + 30)
        returned = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        fleet.fault("se7-1", "link-up")
    assert returned - cut <= BOUND, f"reported {returned - cut:.1f} s after the cut"
    assert proc.returncode == 4, out + err
    assert "unreachable" in out and "/boot/emmcboot.itb untouched" in out, out
    assert "memory rollback" not in out, out  # there is nothing to roll back
    assert fleet.state.box_paths("se7-1").boot_image.read_bytes() == before
    advice = [line for line in out.splitlines() if "--break-lock" in line]
    assert len(advice) == 1 and "/data/sophon-fleet/locks/memory.lock" in advice[0], out
    again = shlex.split(advice[0].split("`")[1])
    assert again[:3] == ["sophon-fleet", "memory", "apply"]
    fleet.fault("se7-1", "heal")  # memedit-slow off; the link is up again
    done = subprocess.run([exe, *again[1:]], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert fleet.hardware("se7-1").heaps == [7615, 3071, 3071]
