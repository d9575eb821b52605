"""memory plan / apply / rollback through the CLI against simulated fleets."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from provision.cli.main import cli
from provision.manifest import load_manifest
from provision.memory import bootfit
from provision.memory.apply import Stage
from provision.memory.layout import Layout, layout_json
from sim import itb, kit_archive
from sim.fleet import ssh_banner
from tests.sim.conftest import connect, needs_root, run, sudo
from tests.sim.flows import APPLY_STAGE_HOLDS, FACTORY, HALVED, TARGET, hold_stage, read_until

pytestmark = [pytest.mark.sim, needs_root]

FAST = ("--connect-timeout", "2", "--reboot-timeout", "15")
STAGES = {s.value for s in Stage}


def heaps(npu, vpu, vpp):
    """A layout as the JSON outputs name it."""
    return layout_json(Layout(npu, vpu, vpp))


@pytest.fixture
def kit(tmp_path):
    return str(kit_archive.build_kit(tmp_path / "kit").tarball)


def invoke(*args):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def apply_json(fleet, kit, *args):
    code, output = invoke(
        "memory", "apply", "--json", "-i", str(fleet.inventory_path), "--kit", kit, "--yes", *FAST, *args
    )
    return code, json.loads(output) if output.startswith("{") else output


def boot_image(fleet, name):
    return itb.decode(fleet.state.box_paths(name).boot_image.read_bytes())


def test_factory_box_is_applied_rebooted_and_verified(sim_fleet, kit):
    fleet = sim_fleet(["se7-factory"])
    before = fleet.hardware("se7-1")
    code, doc = apply_json(fleet, kit)
    assert code == 0, doc
    (host,) = doc["hosts"]
    assert host["result"] == "applied"
    assert host["before"] == heaps(3950, 2048, 3072)
    assert host["after"] == heaps(7615, 3071, 3071)
    after = fleet.hardware("se7-1")
    assert after.heaps == [7615, 3071, 3071]
    assert after.boot_id != before.boot_id and after.boot_count == before.boot_count + 1
    backup = host["backup"]
    client = connect(fleet, "se7-1")
    assert run(client, f"sha256sum {backup['path']}")[1].split()[0] == backup["sha256"]
    assert run(client, f"cat {backup['path']}.sha256")[1].split()[0] == backup["sha256"]
    assert run(client, "ls -a /boot")[1].split() == [
        ".",
        "..",
        "emmcboot.itb",
        "emmcboot.itb.memeditBak",
        "multi.its",
    ]


def boot_sha(fleet, name):
    import hashlib

    return hashlib.sha256(fleet.state.box_paths(name).boot_image.read_bytes()).hexdigest()


def test_plan_shows_what_apply_would_do_and_changes_nothing(sim_fleet):
    fleet = sim_fleet(["se7-factory", "se7-ready-int8"])
    code, output = invoke(
        "memory", "plan", "--json", "-i", str(fleet.inventory_path), "--connect-timeout", "2"
    )
    assert code == 0
    hosts = {h["host"]: h for h in json.loads(output)["hosts"]}
    assert hosts["se7-1"]["action"] == "check"  # no kit on the box yet: max unknown
    assert hosts["se7-2"]["action"] == "nothing"
    assert hosts["se7-2"]["target"] == heaps(7615, 3071, 3071)
    code, output = invoke("memory", "plan", "-i", str(fleet.inventory_path), "--npu", "7616", "--vpu", "1")
    assert code == 2 and "give all three" in output


def test_ready_box_is_left_alone_and_a_second_apply_changes_nothing(sim_fleet, kit):
    fleet = sim_fleet(["se7-ready-int8", "se7-factory"])
    ready_boot = fleet.hardware("se7-1").boot_id
    code, doc = apply_json(fleet, kit)
    assert code == 0, doc
    assert [h["result"] for h in doc["hosts"]] == ["unchanged", "applied"]
    assert fleet.hardware("se7-1").boot_id == ready_boot  # no reboot
    client = connect(fleet, "se7-1")
    assert run(client, "ls /data/sophon-fleet 2>&1")[0] != 0  # no upload either
    factory_boot = fleet.hardware("se7-2").boot_id
    code, doc = apply_json(fleet, kit)
    assert code == 0
    assert [h["result"] for h in doc["hosts"]] == ["unchanged", "unchanged"]
    assert doc["hosts"][1]["plan"]["action"] == "nothing"  # the kit is there now: max known
    assert fleet.hardware("se7-2").boot_id == factory_boot


def test_over_max_request_is_refused_before_any_change(sim_fleet, kit):
    fleet = sim_fleet(["se7-factory"])
    before, boot = boot_sha(fleet, "se7-1"), fleet.hardware("se7-1").boot_id
    code, doc = apply_json(fleet, kit, "--npu", "7616", "--vpu", "3071", "--vpp", "3071")
    assert code == 3, doc
    (host,) = doc["hosts"]
    assert host["result"] == "refused" and "npu 7616 > max 7615" in host["error"]
    assert boot_sha(fleet, "se7-1") == before and fleet.hardware("se7-1").boot_id == boot
    client = connect(fleet, "se7-1")
    assert run(client, "ls /boot")[1].split() == ["emmcboot.itb", "multi.its"]


WROTE_WRONG = "boots with 3807/1535/1535 (read from its device tree), not the requested 7615/3071/3071"


@pytest.mark.parametrize(
    "fault, why", [("memedit-fails", "Error: en_emmcfile"), ("itb-wrong-layout", WROTE_WRONG)]
)
def test_memedit_failure_leaves_boot_unchanged(sim_fleet, kit, fault, why):
    """memory_edit fails, or checks 7615/3071/3071 but writes half (itb-wrong-layout: the run decodes the
    image it wrote from its device tree): either way the run stops at `edit`, before the backup and the swap,
    with /boot untouched and no reboot."""
    fleet = sim_fleet(["se7-factory"])
    fleet.fault("se7-1", fault)
    before, boot = boot_sha(fleet, "se7-1"), fleet.hardware("se7-1").boot_id
    code, doc = apply_json(fleet, kit)
    assert code == 1, doc
    (host,) = doc["hosts"]
    assert host["result"] == "failed" and host["stage"] == "edit" and host["image"] == "old"
    assert why in host["error"] and "/boot is unchanged" in host["error"], host
    assert boot_sha(fleet, "se7-1") == before and fleet.hardware("se7-1").boot_id == boot
    assert fleet.hardware("se7-1").heaps == [3950, 2048, 3072] and not backups_json(fleet)["backups"]
    client = connect(fleet, "se7-1")
    assert run(client, "ls /data/sophon-fleet/locks")[1].split() == []  # the lock was released


@pytest.mark.parametrize("fault", ["itb-corrupt", "dark"])
def test_box_that_does_not_come_back_is_reported_with_recovery_and_others_finish(sim_fleet, kit, fault):
    fleet = sim_fleet(["se7-factory", "se7-factory"])
    fleet.fault("se7-1", fault)
    code, doc = apply_json(fleet, kit, "--reboot-timeout", "4")
    assert code == 1, doc
    bad, good = doc["hosts"]
    assert good["result"] == "applied" and fleet.hardware("se7-2").heaps == [7615, 3071, 3071]
    assert bad["result"] == "failed" and bad["stage"] == "waiting" and bad["image"] == "new"
    assert "did not come back within 4 s" in bad["error"]
    backup = bad["backup"]["path"]
    assert backup.startswith("/data/sophon-fleet/backups/emmcboot.itb.")
    recovery = "\n".join(bad["recovery"])
    assert (
        backup in recovery and "memory rollback se7-1 --break-lock" in recovery and "memeditBak" in recovery
    )
    status = {v.name: v.state for v in fleet.status()}
    assert status["se7-1"] == "dark"
    # the backup really is the old image: put it back by hand as the recovery text says, and it boots
    data = fleet.state.box_paths("se7-1").data
    saved = (data / backup.removeprefix("/data/")).read_bytes()
    assert itb.decode(saved).heaps == (3950, 2048, 3072)
    if fault == "dark":  # power comes back: the box boots the new image; rollback as the recovery text says
        fleet.fault("se7-1", "heal")
        fleet.wait_ready(timeout=15, names=["se7-1"])
        inv = str(fleet.inventory_path)
        code, output = invoke("memory", "rollback", "se7-1", "-i", inv, "--yes", *FAST)
        assert code == 3 and "se7-1 is locked" in output
        code, output = invoke("memory", "rollback", "se7-1", "-i", inv, "--yes", "--break-lock", *FAST)
        assert code == 0, output
        assert fleet.hardware("se7-1").heaps == [3950, 2048, 3072]


def test_wrong_layout_after_boot_is_rolled_back(sim_fleet, kit):
    """The image holds the target, but the box boots with half of it (boot-heaps-short, one boot): the verify
    after the reboot restores the backup, reboots and verifies it."""
    fleet = sim_fleet(["se7-factory"])
    fleet.fault("se7-1", "boot-heaps-short")
    before = fleet.hardware("se7-1")
    code, doc = apply_json(fleet, kit)
    assert code == 1, doc
    (host,) = doc["hosts"]
    assert host["result"] == "failed" and host["stage"] == "rollback" and host["image"] == "old"
    assert "booted with 3807/1535/1535" in host["error"] and "rolled back to 3950/2048/3072" in host["error"]
    after = fleet.hardware("se7-1")
    assert after.heaps == before.heaps == [3950, 2048, 3072]
    assert after.boot_count == before.boot_count + 2


def test_no_auto_rollback_then_memory_rollback(sim_fleet, kit):
    fleet = sim_fleet(["se7-factory"])
    fleet.fault("se7-1", "boot-heaps-short")
    code, doc = apply_json(fleet, kit, "--no-auto-rollback")
    assert code == 1 and doc["hosts"][0]["image"] == "new"
    assert fleet.hardware("se7-1").heaps == [3807, 1535, 1535]
    code, output = invoke(
        "memory", "rollback", "se7-1", "--json", "-i", str(fleet.inventory_path), "--yes", *FAST
    )
    assert code == 0, output
    (host,) = json.loads(output)["hosts"]
    assert host["result"] == "restored" and host["after"] == heaps(3950, 2048, 3072)
    assert fleet.hardware("se7-1").heaps == [3950, 2048, 3072]


def test_rolling_serial_1_max_fail_0_stops_after_the_first_failure(sim_fleet, kit):
    fleet = sim_fleet(["se7-factory", "se7-factory", "se7-factory"])
    fleet.fault("se7-1", "memedit-fails")
    code, doc = apply_json(fleet, kit, "--serial", "1", "--max-fail-percent", "0")
    assert code == 1
    assert [h["result"] for h in doc["hosts"]] == ["failed", "skipped", "skipped"]
    assert fleet.hardware("se7-2").heaps == fleet.hardware("se7-3").heaps == [3950, 2048, 3072]


def start_apply(fleet, kit, *args):
    """The real CLI in its own process (so it can be interrupted); progress lines on stderr."""
    exe = str(Path(sys.executable).with_name("sophon-fleet"))
    command = [exe, "memory", "apply", "-i", str(fleet.inventory_path), "--kit", kit, "--yes", *FAST, *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def last_stage(lines):
    """The stage of the last progress line (`host  stage  detail`)."""
    stages = [line.split()[1] for line in lines if len(line.split()) > 1 and line.split()[1] in STAGES]
    return stages[-1] if stages else None


def test_a_second_concurrent_apply_on_the_same_box_is_refused(sim_fleet, kit):
    fleet = sim_fleet(["se7-factory"])
    fleet.fault("se7-1", "memedit-slow")  # the first run sits in its edit stage for 3 s, holding the lock
    first = start_apply(fleet, kit)
    seen = []
    try:
        read_until(first, "edit", seen)
        code, doc = apply_json(fleet, kit, "--npu", "2048", "--vpu", "2048", "--vpp", "2048")
        assert code == 3, doc
        (host,) = doc["hosts"]
        assert host["result"] == "refused" and host["stage"] == "lock" and host["image"] == "old"
        assert "se7-1 is locked: memory apply by" in host["error"]
    finally:
        out, err = first.communicate(timeout=90)
    assert first.returncode == 0, "".join(seen) + err + out
    assert fleet.hardware("se7-1").heaps == [7615, 3071, 3071]
    assert fleet.hardware("se7-1").boot_count == 2  # one reboot, by the run that held the lock


def test_a_lock_held_by_another_run_is_named(sim_fleet, kit):
    fleet = sim_fleet(["se7-factory"])
    client = connect(fleet, "se7-1")
    owner = '{"controller": "laptop-2", "operation": "memory apply", "pid": 42, "since": "x", "user": "ops"}'
    lock = "/data/sophon-fleet/locks/memory.lock"
    run(client, f"mkdir -p {lock} && echo '{owner}' > {lock}/owner")
    code, doc = apply_json(fleet, kit)
    assert code == 3
    assert doc["hosts"][0]["error"] == "se7-1 is locked: memory apply by ops@laptop-2 (pid 42) since x"
    assert "--break-lock" in doc["hosts"][0]["hint"]
    assert fleet.hardware("se7-1").heaps == [3950, 2048, 3072]


def test_break_lock_refuses_while_the_owner_runs_on_this_controller(sim_fleet, kit):
    """--break-lock checks the owner's pid when the lock was taken on this controller."""
    fleet = sim_fleet(["se7-factory"])
    fleet.fault("se7-1", "memedit-slow")
    first = start_apply(fleet, kit)
    seen = []
    try:
        read_until(first, "edit", seen)
        code, doc = apply_json(fleet, kit, "--break-lock")
        assert code == 3, doc
        (host,) = doc["hosts"]
        assert host["result"] == "refused" and host["stage"] == "lock"
        assert (
            f"not breaking it: its run (pid {first.pid}) is still running on this controller" in host["error"]
        )
    finally:
        out, err = first.communicate(timeout=90)
    assert first.returncode == 0, "".join(seen) + err + out
    assert fleet.hardware("se7-1").boot_count == 2  # only the lock's owner rebooted the box


def test_break_lock_from_another_controller_goes_by_the_heartbeat(sim_fleet, kit):
    """A lock from another controller (its pid cannot be checked here) is broken only once its heartbeat is
    older than STALE_S."""
    from provision.boxlock import STALE_S

    fleet = sim_fleet(["se7-factory"])
    client = connect(fleet, "se7-1")
    owner = '{"controller": "laptop-2", "operation": "memory apply", "pid": 42, "since": "x", "user": "ops"}'
    lock = "/data/sophon-fleet/locks/memory.lock"
    run(client, f"mkdir -p {lock} && echo '{owner}' > {lock}/owner && touch {lock}/heartbeat")
    code, doc = apply_json(fleet, kit, "--break-lock")
    assert code == 3, doc
    assert "not breaking it: its heartbeat is" in doc["hosts"][0]["error"]
    assert fleet.hardware("se7-1").heaps == [3950, 2048, 3072]
    status, _ = run(client, f"touch -d '-{int(STALE_S) + 60} seconds' {lock}/heartbeat")
    client.close()
    assert status == 0
    code, doc = apply_json(fleet, kit, "--break-lock")
    assert code == 0, doc
    assert fleet.hardware("se7-1").heaps == [7615, 3071, 3071]


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_interrupt_at_the_swap_leaves_a_bootable_image(sim_fleet, kit, how):
    fleet = sim_fleet(["se7-factory"])
    old = boot_sha(fleet, "se7-1")
    proc = start_apply(fleet, kit)
    seen = []
    read_until(proc, "swap", seen)
    proc.send_signal(how)
    out, err = proc.communicate(timeout=60)
    image = boot_image(fleet, "se7-1")  # decodes: a whole image, old or new, never a half-copied one
    assert image.heaps in ((3950, 2048, 3072), (7615, 3071, 3071))
    assert sorted(p.name for p in fleet.state.box_paths("se7-1").boot_image.parent.iterdir()) == [
        "emmcboot.itb",
        "emmcboot.itb.memeditBak",
        "multi.its",
    ]
    if how == signal.SIGINT:
        assert proc.returncode == 130, err
        which = (
            "NEW boot image in place" if boot_sha(fleet, "se7-1") != old else "still has its old boot image"
        )
        assert which in out, out
    fleet.reboot("se7-1")
    assert fleet.hardware("se7-1").heaps == list(image.heaps)
    if how == signal.SIGKILL:  # the killed run left its lock: refused until --break-lock
        code, doc = apply_json(fleet, kit)
        assert code == 3 and "--break-lock" in doc["hosts"][0]["hint"]
        code, doc = apply_json(fleet, kit, "--break-lock")
        assert code == 0 and fleet.hardware("se7-1").heaps == [7615, 3071, 3071]


def test_kit_from_the_mirror_pinned_and_the_airbox_preinstalled_kit(sim_fleet):
    fleet = sim_fleet(["se7-factory", "airbox"], mirror=True)
    code, output = invoke(
        "memory",
        "apply",
        "--json",
        "-i",
        str(fleet.inventory_path),
        "--model",
        str(fleet.manifest_path),
        "--yes",
        *FAST,
    )
    assert code == 0, output
    assert [h["result"] for h in json.loads(output)["hosts"]] == ["applied", "applied"]
    assert fleet.hardware("se7-1").heaps == fleet.hardware("se7-2").heaps == [7615, 3071, 3071]
    se7, airbox = connect(fleet, "se7-1"), connect(fleet, "se7-2")
    kit_sha = run(se7, "cat /data/sophon-fleet/memory_edit/.kit-sha256")[1].strip()
    assert kit_sha == load_manifest(fleet.manifest_path).kit.pinned.sha256
    assert run(airbox, "ls /data/sophon-fleet")[1].split() == ["backups", "locks"]  # no upload: its own kit
    assert run(airbox, "ls /opt/sophon/memory_edit/emmcboot.itb")[0] == 0  # written by its own kit


def test_confirmation_is_required_and_an_unreachable_box_does_not_stop_the_others(sim_fleet, kit):
    fleet = sim_fleet(["se7-factory", "se7-factory"])
    fleet.power_off("se7-2")
    deadline = time.monotonic() + 10
    while ssh_banner(fleet.state.box("se7-2").address) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not ssh_banner(fleet.state.box("se7-2").address), "se7-2 still answers after its power-off"
    inv = str(fleet.inventory_path)
    code, output = invoke("memory", "apply", "-i", inv, "--kit", kit, *FAST)
    assert code == 2 and "1 box would be rebooted (se7-1)" in output and "--yes" in output
    assert fleet.hardware("se7-1").heaps == [3950, 2048, 3072]
    code, doc = apply_json(fleet, kit)
    assert code == 4, doc
    assert [h["result"] for h in doc["hosts"]] == ["applied", "unreachable"]
    assert fleet.hardware("se7-1").heaps == [7615, 3071, 3071]


def test_a_full_data_partition_fails_before_any_change_and_leaves_no_lock(sim_fleet, kit):
    fleet = sim_fleet(["se7-factory"])
    fleet.fault("se7-1", "disk-full")
    before = boot_sha(fleet, "se7-1")
    code, doc = apply_json(fleet, kit)
    assert code == 1, doc
    (host,) = doc["hosts"]
    assert host["image"] == "old" and "df -h /data" in host["hint"]
    assert boot_sha(fleet, "se7-1") == before
    fleet.fault("se7-1", "heal")
    code, doc = apply_json(fleet, kit)
    assert code == 0 and fleet.hardware("se7-1").heaps == [7615, 3071, 3071]


def test_without_the_sudo_password_the_heaps_are_unknown_and_the_box_is_refused(sim_fleet, tmp_path):
    fleet = sim_fleet(["se7-factory"])
    doc = yaml.safe_load(fleet.inventory_path.read_text())
    del doc["defaults"]["become_password_file"]
    inv = tmp_path / "no-sudo.yml"
    inv.write_text(yaml.safe_dump(doc))
    code, output = invoke("memory", "plan", "--json", "-i", str(inv), "--connect-timeout", "2")
    assert code == 3, output
    (host,) = json.loads(output)["hosts"]
    assert host["action"] == "refused" and host["reason"].startswith("current heaps unknown")


def test_a_deleted_vpu_heap_is_planned_applied_verified_and_rolled_back(sim_fleet, kit):
    """`--vpu 0` drops vpp's max to 4095 (refused before any change, exit 3); with 4095
    the box boots with no vpu heap and no debugfs dir, verify reads it as 0, and rollback works from there."""
    fleet = sim_fleet(["se7-factory"])
    before, boot = boot_sha(fleet, "se7-1"), fleet.hardware("se7-1").boot_id
    code, doc = apply_json(fleet, kit, "--npu", "7615", "--vpu", "0", "--vpp", "4096")
    assert code == 3, doc
    (host,) = doc["hosts"]
    assert host["result"] == "refused", host
    assert "vpp 4096 > max 4095 (vpp max is 4095 when vpu is deleted)" in host["error"]
    assert boot_sha(fleet, "se7-1") == before and fleet.hardware("se7-1").boot_id == boot

    code, doc = apply_json(fleet, kit, "--npu", "7615", "--vpu", "0", "--vpp", "4095")
    assert code == 0, doc
    (host,) = doc["hosts"]
    assert host["result"] == "applied" and host["after"] == heaps(7615, 0, 4095)
    assert fleet.hardware("se7-1").heaps == [7615, 0, 4095]
    client = connect(fleet, "se7-1")
    status, out = sudo(client, "ls /sys/kernel/debug/ion")
    assert status == 0 and sorted(out.split()) == ["bm_npu_heap_dump", "bm_vpp_heap_dump"], out

    code, output = invoke(
        "memory", "rollback", "se7-1", "--json", "-i", str(fleet.inventory_path), "--yes", *FAST
    )
    assert code == 0, output
    (host,) = json.loads(output)["hosts"]
    assert host["result"] == "restored" and host["after"] == heaps(3950, 2048, 3072)
    assert host["before"] == heaps(7615, 0, 4095)
    client.close()  # the rollback rebooted the box
    client = connect(fleet, "se7-1")
    status, out = sudo(client, "ls /sys/kernel/debug/ion")
    client.close()
    assert "bm_vpu_heap_dump" in out.split()


SLOW_SYNC = '#!/bin/sh\nsleep 2\nexec /bin/sync "$@"\n'


def killed_after_the_swap(fleet, kit, *args):
    """Issue 13 item 2's state: the CLI is killed (-9) once the new image is in /boot, before the reboot.
    A `sync` that takes 2 s on the box (eMMC-like) holds the run right after the rename; the kill is made
    once the box's /boot has changed (awaited), so the box keeps running its old heaps."""
    client = connect(fleet, "se7-1")
    assert run(client, "cat > /tmp/sync", stdin=SLOW_SYNC)[0] == 0
    assert sudo(client, "install -m 755 /tmp/sync /usr/local/bin/sync")[0] == 0
    old = boot_sha(fleet, "se7-1")
    proc = start_apply(fleet, kit, *args)
    seen = []
    try:
        read_until(proc, "swap", seen)
        deadline = time.monotonic() + 30
        while boot_sha(fleet, "se7-1") == old and time.monotonic() < deadline:
            time.sleep(0.01)
        assert boot_sha(fleet, "se7-1") != old, "the swap did not happen"
        proc.kill()
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert sudo(client, "rm -f /usr/local/bin/sync")[0] == 0
    client.close()
    return old


def backups_json(fleet):
    code, output = invoke("memory", "backups", "se7-1", "-i", str(fleet.inventory_path), "--json")
    assert code == 0, output
    return json.loads(output)


def test_after_a_kill_at_the_swap_the_next_run_reboots_into_the_image_in_place(sim_fleet, kit):
    fleet = sim_fleet(["se7-factory"])
    factory = killed_after_the_swap(fleet, kit)
    hw = fleet.hardware("se7-1")
    assert hw.heaps == [3950, 2048, 3072] and hw.boot_count == 1  # not rebooted: old heaps, new /boot
    doc = backups_json(fleet)
    assert doc["boot"]["pending"] is True
    assert doc["boot"]["layout"] == heaps(7615, 3071, 3071)  # from memory_edit's check
    assert doc["boot"]["booted_layout"] == heaps(3950, 2048, 3072)
    (first,) = doc["backups"]
    assert first["factory"] and first["booted"] and first["sha256"] == factory
    assert first["layout"] == [3950, 2048, 3072]

    code, doc = apply_json(fleet, kit, "--break-lock")  # the killed run's pid is gone: the lock is broken
    assert code == 0, doc
    (host,) = doc["hosts"]
    assert host["result"] == "applied" and host["after"] == heaps(7615, 3071, 3071)
    assert host["before"] == heaps(3950, 2048, 3072)
    assert fleet.hardware("se7-1").boot_count == 2  # rebooted once, into the image already in place
    assert len(backups_json(fleet)["backups"]) == 1  # no backup of the pending image under a wrong label

    assert rolled_back_to(fleet, "factory")["after"] == heaps(3950, 2048, 3072)
    assert boot_sha(fleet, "se7-1") == factory


def rolled_back_to(fleet, backup: str) -> dict:
    """`memory rollback se7-1 --to BACKUP`, which must restore it: its JSON result."""
    args = ["--to", backup, "--json", "-i", str(fleet.inventory_path), "--yes", *FAST]
    code, output = invoke("memory", "rollback", "se7-1", *args)
    assert code == 0, output
    (host,) = json.loads(output)["hosts"]
    assert host["result"] == "restored", host
    return host


def test_after_a_kill_at_the_swap_a_new_target_labels_backups_from_the_image(sim_fleet, kit):
    fleet = sim_fleet(["se7-factory"])
    factory = killed_after_the_swap(fleet, kit)
    pending = boot_sha(fleet, "se7-1")
    fleet.fault("se7-1", "boot-heaps-short")  # the new target's image boots short: the run rolls back

    code, doc = apply_json(fleet, kit, "--break-lock", "--npu", "7000", "--vpu", "2048", "--vpp", "2048")

    assert code == 1, doc
    (host,) = doc["hosts"]
    assert host["stage"] == "rollback" and host["image"] == "old", host
    assert host["backup"]["sha256"] == factory  # auto-rollback restored the image the box was running
    assert fleet.hardware("se7-1").heaps == [3950, 2048, 3072]
    assert boot_sha(fleet, "se7-1") == factory
    labels = {b["sha256"]: b["layout"] for b in backups_json(fleet)["backups"]}
    assert labels == {factory: [3950, 2048, 3072], pending: [7615, 3071, 3071]}  # never the running heaps


def test_a_swap_into_a_too_full_boot_is_refused_before_anything_is_replaced(sim_fleet, kit):
    """Issue 13 item 11: the sim's /boot is size-limited (a tmpfs standing in for the FAT partition); with
    less room than a second image needs, apply refuses before memory_edit runs."""
    fleet = sim_fleet(["se7-factory"])
    client = connect(fleet, "se7-1")
    status, out = run(client, "df -Pk /boot | awk 'NR==2 {print $2, $4}'")
    total, free = (int(w) for w in out.split())
    assert total <= 64 * 1024, out  # not an unlimited bind mount
    image_kib = fleet.state.box_paths("se7-1").boot_image.stat().st_size // 1024
    filler = (free - image_kib - 512) * 1024  # leaves less than the image + 1 MiB a swap needs
    assert sudo(client, f"fallocate -l {filler} /boot/filler")[0] == 0
    before, boot = boot_sha(fleet, "se7-1"), fleet.hardware("se7-1").boot_id

    code, doc = apply_json(fleet, kit)

    assert code == 3, doc
    (host,) = doc["hosts"]
    assert host["result"] == "refused" and host["stage"] == "check" and host["image"] == "old", host
    assert "/boot has" in host["error"] and "nothing was changed" in host["error"]
    assert boot_sha(fleet, "se7-1") == before and fleet.hardware("se7-1").boot_id == boot
    status, out = run(client, "ls -a /boot")
    client.close()
    assert sorted(out.split()) == [".", "..", "emmcboot.itb", "filler", "multi.its"], out


KILL_STAGES = ["lock", "upload", "check", "edit", "backup", "swap", "reboot", "waiting", "verify", "rollback"]


@pytest.mark.parametrize("stage", KILL_STAGES)
def test_kill_9_at_a_stage_then_break_lock_finishes_the_job(sim_fleet, kit, stage):
    """SIGKILL of the CLI while it is in `stage`: awaited in its progress output, and held there on the box
    (a Hold on a command only that stage runs; `waiting`: the box is rebooting). /boot keeps a bootable image,
    the lock stays, a run that must change the box is refused naming it, `--break-lock` (the owner's pid is
    gone) brings the box to its target, and the factory backup keeps its layout."""
    fleet = sim_fleet(["se7-factory"])
    factory = boot_sha(fleet, "se7-1")
    hold = hold_stage(fleet, "se7-1", stage) if stage in APPLY_STAGE_HOLDS else None
    if stage == "rollback":
        fleet.fault("se7-1", "boot-heaps-short")  # the box boots with the wrong layout: the run rolls back
    proc = start_apply(fleet, kit)
    seen = []
    try:
        read_until(proc, stage, seen)
        if hold is not None:
            hold.wait_held()
        proc.kill()
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=30)
    assert last_stage(seen + err.splitlines()) == stage, "".join(seen) + err  # killed in that stage
    if stage in ("reboot", "waiting", "verify"):  # the box reboots (or rebooted) into the new image
        deadline = time.monotonic() + 60
        while fleet.hardware("se7-1").boot_count < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        fleet.wait_ready(timeout=60, names=["se7-1"])
    elif hold is not None:
        hold.wait_released()  # what the box was doing when the CLI died has finished there
    assert boot_image(fleet, "se7-1").heaps in (FACTORY, TARGET, HALVED)  # a whole, bootable image
    if hold is not None:
        hold.remove()
    fleet.fault("se7-1", "heal")
    code, doc = apply_json(fleet, kit, "--npu", "7000", "--vpu", "2048", "--vpp", "2048")
    assert code == 3 and "is locked: memory apply by" in doc["hosts"][0]["error"], doc
    code, doc = apply_json(fleet, kit, "--break-lock")
    assert code == 0, doc
    assert fleet.hardware("se7-1").heaps == list(TARGET)
    assert boot_image(fleet, "se7-1").heaps == TARGET
    backups = backups_json(fleet)["backups"]
    assert backups[0]["sha256"] == factory and backups[0]["layout"] == list(FACTORY)


def copy_into_boot_by_hand(fleet, heaps):
    """An operator copies an image made elsewhere into /boot and does not reboot: no record knows it."""
    image = itb.encode(itb.BootImage("bm1684x_se7_v1.dtb", heaps))
    (fleet.state.box_paths("se7-1").data / "hand.itb").write_bytes(image)
    client = connect(fleet, "se7-1")
    assert sudo(client, "cp /data/hand.itb /boot/emmcboot.itb && sync")[0] == 0
    client.close()
    return boot_sha(fleet, "se7-1")


def test_an_image_copied_into_boot_by_hand_is_labelled_from_its_bytes(sim_fleet, kit):
    """Issue 13 item 2: a backup's label is computed from the image itself. The image in /boot was never
    booted and no run has seen it: `memory backups` decodes it (and sees the box runs something else),
    `memory apply` backs it up under its own layout, and rolling back to that backup boots exactly it."""
    fleet = sim_fleet(["se7-factory"])
    hand = copy_into_boot_by_hand(fleet, (7615, 3071, 3071))

    doc = backups_json(fleet)

    assert doc["boot"]["sha256"] == hand and doc["boot"]["layout"] == heaps(7615, 3071, 3071)
    assert doc["boot"]["pending"] is True and doc["boot"]["booted_sha256"] is None
    assert doc["boot"]["booted_layout"] == heaps(3950, 2048, 3072)
    code, doc = apply_json(fleet, kit, "--npu", "7000", "--vpu", "2048", "--vpp", "2048")
    assert code == 0, doc
    (host,) = doc["hosts"]
    assert host["result"] == "applied" and host["after"] == heaps(7000, 2048, 2048)
    assert host["before"] == heaps(3950, 2048, 3072)  # what the box ran
    (backup,) = backups_json(fleet)["backups"]
    assert backup["sha256"] == hand and backup["layout"] == [7615, 3071, 3071]  # never the running heaps
    assert backup["records_disagree"] is False
    assert rolled_back_to(fleet, backup["name"])["after"] == heaps(7615, 3071, 3071)
    assert boot_sha(fleet, "se7-1") == hand


def test_apply_plans_from_the_decoded_image_in_boot_and_only_reboots_into_it(sim_fleet, kit):
    """The hand-copied image already holds the target: apply reboots into it (no memory_edit, no backup of
    an image the box does not run), verified."""
    fleet = sim_fleet(["se7-factory"])
    hand = copy_into_boot_by_hand(fleet, (7615, 3071, 3071))

    code, doc = apply_json(fleet, kit)

    assert code == 0, doc
    (host,) = doc["hosts"]
    assert host["result"] == "applied" and host["after"] == heaps(7615, 3071, 3071)
    assert fleet.hardware("se7-1").boot_count == 2 and boot_sha(fleet, "se7-1") == hand
    doc = backups_json(fleet)
    assert doc["backups"] == [] and doc["boot"]["pending"] is False
    work = fleet.state.box_paths("se7-1").data / "sophon-fleet"
    assert list(work.rglob("*.itb")) != [] and list(work.rglob("output/emmcboot.itb")) == []  # -p ran, -c not


def test_a_hostile_image_in_boot_is_unlabelled_with_the_reason(sim_fleet):
    """An image whose dtb lies past its end: no layout, the reason shown, nothing else read or assumed."""
    fleet = sim_fleet(["se7-factory"])
    raw = bytearray(itb.encode(itb.BootImage("bm1684x_se7_v1.dtb", (7615, 3071, 3071))))
    fit, _ = bootfit.read_tree(lambda o, n: bytes(raw[o : o + n]), 0, len(raw))
    position = fit.child("images").child("fdt-1").props["data-position"].offset
    raw[position : position + 4] = (0x7FFFFF00).to_bytes(4, "big")
    (fleet.state.box_paths("se7-1").data / "hand.itb").write_bytes(bytes(raw))
    client = connect(fleet, "se7-1")
    assert sudo(client, "cp /data/hand.itb /boot/emmcboot.itb")[0] == 0
    client.close()

    doc = backups_json(fleet)

    assert doc["boot"]["layout"] is None and "past the end of the file" in doc["boot"]["layout_error"]
    code, output = invoke("memory", "backups", "se7-1", "-i", str(fleet.inventory_path))
    assert code == 0 and "layout unknown" in output and "past the end of the file" in output, output
