"""Every SSH read and write has a deadline, even when the socket blocks.

A link cut (`link-down`, and never `link-up` until the command has returned) must end in a clear report
within the connect timeout plus the default idle bound (<= 60 s), with the box named unreachable. The cut is
made when the stage under test is under way (awaited on the box or in the progress output), never after a
blind sleep.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from provision.cli.main import cli
from provision.ssh.transport import Timeouts
from sim import itb
from tests.sim.conftest import needs_root
from tests.sim.flows import (
    APPLY_STAGE_HOLDS,
    FACTORY,
    HALVED,
    TARGET,
    Hold,
    hold_stage,
    pull_and_push,
    pull_pinned_standins,
    read_until,
    use_fleet,
)
from tests.sim.flows import invoke as invoke_all

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


REBOOT_TIMEOUT = 15.0
UNTOUCHED = "/boot/emmcboot.itb untouched"
# per stage of `memory apply`: exit code, what the report must say about /boot, and the command its advice
# gives (with --break-lock: the run could not remove its lock)
CUT_STAGES = {
    "lock": (4, UNTOUCHED, "apply"),
    "upload": (4, UNTOUCHED, "apply"),
    "check": (4, UNTOUCHED, "apply"),
    "edit": (4, UNTOUCHED, "apply"),
    "backup": (4, UNTOUCHED, "apply"),
    "swap": (4, "which boot image the box has is unknown", "rollback"),  # cut before the swap's rename
    "reboot": (1, "did not come back within 15 s after the reboot (last: unreachable: ", "rollback"),
    "waiting": (1, "did not come back within 15 s after the reboot (last: unreachable: ", "rollback"),
    "verify": (
        4,
        "the NEW boot image in place (it takes effect at the next reboot), as read back",
        "rollback",
    ),
    "rollback": (4, "which boot image the box has is unknown", "rollback"),  # restoring the backup
}


@pytest.mark.parametrize("stage", CUT_STAGES)
def test_a_link_cut_at_a_stage_of_memory_apply_is_reported_with_what_is_known_and_runnable_advice(
    sim_fleet, tmp_path, stage
):
    """The link is cut while the run is in `stage` (awaited in the CLI's progress output, then held there on
    the box by a Hold; `waiting`: the box is rebooting). The report comes within the bound (plus the reboot's
    own timeout once the box was asked to reboot) and names the box unreachable; it says what is known of
    /boot (before the swap: untouched, and nothing to roll back); its advice runs as printed once the link is
    back, and the next `memory apply` brings the box to its target. /boot always holds a bootable image."""
    code, image_text, advice_verb = CUT_STAGES[stage]
    rebooting = stage in ("reboot", "waiting", "verify", "rollback")  # the box was asked to reboot
    fleet = sim_fleet(["se7-factory"])
    hold = hold_stage(fleet, "se7-1", stage) if stage in APPLY_STAGE_HOLDS else None
    if stage == "rollback":
        fleet.fault("se7-1", "boot-heaps-short")  # it boots with the wrong layout: the run rolls back
    before = fleet.state.box_paths("se7-1").boot_image.read_bytes()
    command = ["memory", "apply", "-i", str(fleet.inventory_path), "--kit", kit_path(tmp_path), "--yes"]
    proc = start(*command, "--connect-timeout", str(CONNECT_TIMEOUT), "--reboot-timeout", str(REBOOT_TIMEOUT))
    seen: list[str] = []
    out, err, took = report_after_a_cut(fleet, proc, in_stage(proc, stage, seen, hold), REBOOT_TIMEOUT)
    bound = BOUND + (REBOOT_TIMEOUT if rebooting else 0)
    assert took <= bound, f"reported {took:.1f} s after the cut"
    assert proc.returncode == code, "".join(seen) + err + out
    assert f"se7-1: {'unreachable' if code == 4 else 'failed'}: " in out and image_text in out, out
    # before the swap there is nothing to roll back
    assert ("memory rollback" in out) == (advice_verb == "rollback"), out
    if stage in ("reboot", "waiting"):  # the box rebooted while its link was down
        fleet.wait_ready(timeout=60, names=["se7-1"])
    elif hold is not None:
        hold.wait_released()
    boot = fleet.state.box_paths("se7-1").boot_image
    assert itb.decode(boot.read_bytes()).heaps in (FACTORY, TARGET, HALVED)  # whole and bootable
    if advice_verb == "apply":
        assert boot.read_bytes() == before
    if hold is not None:
        hold.remove()
    fleet.fault("se7-1", "heal")

    advice = [line for line in out.splitlines() if "--break-lock" in line]
    assert len(advice) == 1, out
    if advice_verb == "apply":
        assert "/data/sophon-fleet/locks/memory.lock" in advice[0], out
    again = shlex.split(advice[0].split("`")[1])
    assert again[:3] == ["sophon-fleet", "memory", advice_verb], advice
    done = start(*again[1:])
    out, err = done.communicate(timeout=180)
    assert done.returncode == 0, out + err
    if advice_verb == "rollback":
        assert boot.read_bytes() == before
        assert fleet.hardware("se7-1").heaps == list(FACTORY)
        code, doc = invoke(*command, "--json", "--connect-timeout", str(CONNECT_TIMEOUT))
        assert code == 0, doc
    assert fleet.hardware("se7-1").heaps == list(TARGET)


def in_stage(proc: subprocess.Popen, stage: str, seen: list[str], hold: Hold | None):
    """A wait for the CLI's progress line of `stage` and, with a hold, for the held call on the box."""

    def wait() -> None:
        read_until(proc, stage, seen)
        if hold is not None:
            hold.wait_held()

    return wait


def report_after_a_cut(fleet, proc: subprocess.Popen, ready, extra: float = 0.0) -> tuple[str, str, float]:
    """Once `ready()` returns, cut se7-1's link and wait for the CLI to end (up to the bound + `extra` +
    30 s); returns its stdout, stderr and the seconds from the cut to its end. The link comes back up
    whatever happened; a CLI still running then is killed."""
    try:
        ready()
        fleet.fault("se7-1", "link-down")
        cut = time.monotonic()
        out, err = proc.communicate(timeout=BOUND + extra + 30)
        return out, err, time.monotonic() - cut
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        fleet.fault("se7-1", "link-up")


def start(*args: str) -> subprocess.Popen:
    """The real CLI in its own process (its progress lines on stderr)."""
    exe = str(Path(sys.executable).with_name("sophon-fleet"))
    return subprocess.Popen([exe, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# per stage of `deploy`: what holds it open long enough to cut the link in it (`install` lasts a second:
# a venv and its wheels), and what the next run finds
DEPLOY_STAGES = {
    "push": (("rate", "8"), "deployed"),  # 1 MB/s: the bundle's wheels take seconds
    "install": (None, "deployed"),
    "selftest": (("slow-tpu", "500"), "deployed"),  # every graph run 0.5 s longer
    "switch": (None, "up-to-date"),  # held before `current` moves; the box then finishes the switch
}


@pytest.mark.parametrize("stage", DEPLOY_STAGES)
def test_a_link_cut_at_a_stage_of_deploy_is_reported_unreachable_with_the_lock_left(
    sim_fleet, tmp_path, monkeypatch, stage
):
    """`deploy` on a box whose link is cut in `stage`: reported unreachable within the bound, saying what is
    known of the runtime in use and naming the runtime lock it could not remove, with the command that goes
    on once the box answers; that command then finishes the job."""
    fault, then = DEPLOY_STAGES[stage]
    fleet = sim_fleet(["se7-ready-int8"], mirror=True)
    use_fleet(fleet, tmp_path, monkeypatch)
    pull_and_push(fleet, "int8")
    hold = Hold(fleet, "se7-1", "ln", (".current.tmp",)) if stage == "switch" else None
    if fault is not None:
        fleet.fault("se7-1", *fault)
    inventory = ("-i", str(fleet.inventory_path), "--connect-timeout", str(CONNECT_TIMEOUT))
    proc = start("deploy", *inventory)
    seen: list[str] = []
    out, err, took = report_after_a_cut(fleet, proc, in_stage(proc, stage, seen, hold))
    fleet.fault("se7-1", "heal")  # the fault gone
    assert took <= BOUND, f"reported {took:.1f} s after the cut"
    assert proc.returncode == 4, "".join(seen) + err + out
    assert re.search(r"^se7-1\s+unreachable\s", out, re.M), out
    (hint,) = [line for line in err.splitlines() if line.startswith("se7-1: hint: ")]
    known = "the switch was under way" if stage == "switch" else "the runtime in use is unchanged (none)"
    assert known in hint and "/data/sophon-fleet/locks/runtime.lock is still on the box" in hint, hint
    current = fleet.state.box_paths("se7-1").data / "sophon-fleet/runtime/current"
    if hold is not None:
        hold.wait_released()
        hold.remove()
    else:
        assert not current.exists()
    again = shlex.split(hint.split("`")[1])
    assert again[:2] == ["sophon-fleet", "deploy"] and "--break-lock" in again, hint
    code, doc, _ = invoke_all(*again[1:], *inventory, "--json")
    assert code == 0, doc
    assert json.loads(doc)["hosts"][0]["status"] == then
    assert current.is_symlink()


def test_a_link_cut_during_the_preflight_probe_is_reported_unreachable_within_the_bound(sim_fleet):
    """The probe (one round trip) is held on the box; the link is cut while it runs."""
    fleet = sim_fleet(["se7-factory"])
    hold = Hold(fleet, "se7-1", "df", ("-Pk ",))  # the probe's disk sizes
    inventory = ("-i", str(fleet.inventory_path), "--connect-timeout", str(CONNECT_TIMEOUT))
    proc = start("preflight", *inventory, "--json")
    out, err, took = report_after_a_cut(fleet, proc, hold.wait_held)
    assert took <= BOUND, f"reported {took:.1f} s after the cut"
    assert proc.returncode == 4, err + out
    (host,) = json.loads(out)["hosts"]
    assert host["status"] == "unreachable" and [r["code"] for r in host["reasons"]] == ["unreachable"], host
    assert "se7-1: connection lost during" in host["reasons"][0]["message"], host
    hold.wait_released()
    hold.remove()
