"""The simulated fleet behaves like real boxes: SSH, isolation, sudo, reboots, faults, clean teardown."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import fabric
import paramiko
import pytest
import yaml
from click.testing import CliRunner

from provision.cli.main import cli
from sim import itb
from sim.fleet import Fleet, pid_alive
from tests.py38 import box_python_version
from tests.sim.conftest import assert_nothing_left, connect, needs_root, run, sudo

pytestmark = [pytest.mark.sim, needs_root]

MIB = 1024 * 1024


def test_three_boxes_answer_over_ssh_each_with_its_own_identity(sim_fleet):
    fleet = sim_fleet(["se7-factory", "se7-ready-int8", "se7-small"])
    seen = {}
    for record in fleet.boxes:
        client = connect(fleet, record.name)
        status, out = run(client, "hostname; cat /proc/sys/kernel/random/boot_id; python3 --version")
        assert status == 0
        hostname, boot_id, python = out.split("\n")[:3]
        seen[record.name] = (hostname, boot_id)
        assert python.startswith(f"Python {box_python_version()}.")
        client.close()
    assert [h for h, _ in seen.values()] == ["se7-1", "se7-2", "se7-3"]
    assert len({b for _, b in seen.values()}) == 3


def test_box_shows_real_device_files(sim_fleet):
    fleet = sim_fleet(["se7-factory"])
    client = connect(fleet, "se7-1")
    _, out = run(
        client,
        "grep -m1 'model name' /proc/cpuinfo; tr -d '\\0' < /sys/firmware/devicetree/base/info/file-name",
    )
    assert out.splitlines() == ["model name\t: bm1684x", "bm1684x_se7_v1.dtb"]
    _, out = run(client, "/usr/sbin/bm_version")
    assert out.startswith("SophonSDK version: V24.04.01\nsophon-soc-libsophon : 0.5.1\n")
    assert "Sophon BM1684X" in out
    _, out = run(client, "readlink /opt/sophon/libsophon-current; ls /boot")
    assert out.split() == ["/opt/sophon/libsophon-0.5.1", "emmcboot.itb", "multi.its"]
    status, out = run(client, "cat /sys/kernel/debug/ion/bm_npu_heap_dump/total_mem")
    assert status != 0 and "Permission denied" in out  # root only, as on a real box
    status, out = sudo(
        client,
        "cat /sys/kernel/debug/ion/bm_npu_heap_dump/total_mem "
        "/sys/kernel/debug/ion/bm_vpu_heap_dump/total_mem "
        "/sys/kernel/debug/ion/bm_vpp_heap_dump/total_mem",
    )
    assert status == 0
    assert [int(v) // MIB for v in out.split()] == [3950, 2048, 3072]
    status, out = run(client, "sudo -S -p '' true", stdin="wrong\n")
    assert status != 0  # sudo asks for linaro's password
    _, out = run(client, "stat -c %s ~/.bashrc")
    assert out.strip() == "0"


def test_password_login_and_fabric_work(sim_fleet):
    fleet = sim_fleet(["se7-factory"])
    address = fleet.state.box("se7-1").address
    conn = fabric.Connection(
        address,
        user="linaro",
        connect_kwargs={"password": "linaro", "look_for_keys": False, "allow_agent": False},
    )
    conn.client.load_host_keys(str(fleet.state.dir / "known_hosts"))
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    assert conn.run("echo $USER", hide=True, in_stream=False).stdout.strip() == "linaro"
    conn.close()


def test_data_is_isolated_between_boxes_and_from_the_host(sim_fleet):
    fleet = sim_fleet(["se7-factory", "se7-factory"])
    one, two = connect(fleet, "se7-1"), connect(fleet, "se7-2")
    assert run(one, "echo from-one > /data/marker && touch /tmp/t && echo ok")[1].strip() == "ok"
    assert run(two, "ls /data/marker")[0] != 0
    assert not Path("/data/marker").exists()
    assert (fleet.state.box_paths("se7-1").data / "marker").read_text() == "from-one\n"
    status, _ = sudo(one, "touch /etc/box-only")
    assert status == 0 and not Path("/etc/box-only").exists()
    assert run(two, "ls /etc/box-only")[0] != 0


def test_sudo_reboot_drops_sessions_and_comes_back_with_a_new_boot_id(sim_fleet):
    fleet = sim_fleet(["se7-factory"])
    client = connect(fleet, "se7-1")
    _, before = run(client, "cat /proc/sys/kernel/random/boot_id")
    run(client, "echo kept > /data/kept")
    watcher = client.get_transport().open_session()
    watcher.exec_command("sleep 600")
    sudo(client, "reboot")
    deadline = time.monotonic() + 5
    while watcher.get_transport().is_active() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not client.get_transport().is_active(), "the session must drop when the box reboots"
    client = reconnect(fleet, "se7-1", timeout=20)
    _, after = run(client, "cat /proc/sys/kernel/random/boot_id; cat /data/kept")
    assert after.split()[0] != before.strip()
    assert after.split()[1] == "kept"  # /data survives reboots
    assert fleet.hardware("se7-1").boot_count == 2


def reconnect(fleet: Fleet, name: str, timeout: float) -> paramiko.SSHClient:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return connect(fleet, name, timeout=1.0)
        except (OSError, EOFError, paramiko.SSHException):  # EOFError: closed mid-handshake while it boots
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_boot_image_decides_the_heaps_and_a_corrupt_one_leaves_the_box_dark(sim_fleet):
    fleet = sim_fleet(["se7-small"])
    boot = fleet.state.box_paths("se7-1").boot_image
    boot.write_bytes(itb.encode(itb.BootImage("bm1684x_se7_v1.dtb", (7615, 3071, 3071))))
    fleet.reboot("se7-1")
    assert fleet.hardware("se7-1").heaps == [7615, 3071, 3071]
    client = connect(fleet, "se7-1")
    _, out = sudo(client, "cat /sys/kernel/debug/ion/bm_npu_heap_dump/total_mem")
    assert int(out) == 7615 * MIB
    sudo(client, "dd if=/dev/zero of=/boot/emmcboot.itb bs=1k count=4 conv=notrunc")
    fleet.request("se7-1", "reboot")
    wait_state(fleet, "se7-1", "dark")
    assert "boot image invalid" in status_of(fleet, "se7-1").detail
    fleet.fault("se7-1", "heal")
    wait_state(fleet, "se7-1", "up")
    fleet.wait_ready()
    assert fleet.hardware("se7-1").heaps == [1024, 1024, 1536]  # reflashed factory image


def status_of(fleet, name):
    return next(v for v in fleet.status() if v.name == name)


def wait_state(fleet, name, state, timeout=20.0):
    deadline = time.monotonic() + timeout
    while status_of(fleet, name).state != state:
        assert time.monotonic() < deadline, f"{name} never reached {state}: {status_of(fleet, name)}"
        time.sleep(0.05)


def test_dark_and_slow_boot_faults(sim_fleet):
    fleet = sim_fleet(["se7-factory", "se7-factory"])
    fleet.fault("se7-1", "dark")
    fleet.request("se7-1", "reboot")
    wait_state(fleet, "se7-1", "dark")
    with pytest.raises((OSError, paramiko.SSHException)):
        connect(fleet, "se7-1", timeout=1.0)
    fleet.fault("se7-1", "heal")
    wait_state(fleet, "se7-1", "up")
    fleet.fault("se7-2", "slow-boot", "2")
    started = time.monotonic()
    fleet.reboot("se7-2")
    assert time.monotonic() - started >= 2.0


def test_link_down_makes_the_box_unreachable_until_link_up(sim_fleet):
    fleet = sim_fleet(["se7-factory"])
    fleet.fault("se7-1", "link-down")
    with pytest.raises((OSError, paramiko.SSHException)):
        connect(fleet, "se7-1", timeout=1.0)
    fleet.fault("se7-1", "link-up")
    with contextlib.closing(connect(fleet, "se7-1")) as client:
        assert run(client, "true")[0] == 0


def test_rate_limits_the_link(sim_fleet):
    fleet = sim_fleet(["se7-factory"])
    client = connect(fleet, "se7-1")
    payload = os.urandom(2 * MIB)

    def upload_seconds() -> float:
        started = time.monotonic()
        status, _ = run(client, "cat > /dev/null", stdin=payload.decode("latin-1"), timeout=30)
        assert status == 0
        return time.monotonic() - started

    fast = upload_seconds()
    fleet.fault("se7-1", "rate", "8")  # 1 MB/s
    slow = upload_seconds()
    assert slow > 1.5 and slow > 3 * fast


def test_disk_full_is_real(sim_fleet):
    fleet = sim_fleet(["se7-factory"])
    fleet.fault("se7-1", "disk-full")
    client = connect(fleet, "se7-1")
    status, out = run(client, "head -c 1M /dev/zero > /data/big")
    assert status != 0 and "No space left on device" in out
    fleet.fault("se7-1", "heal")
    assert run(client, "head -c 1M /dev/zero > /data/big")[0] == 0


def test_software_and_chip_faults(sim_fleet):
    fleet = sim_fleet(["se7-factory"])
    client = connect(fleet, "se7-1")
    fleet.fault("se7-1", "old-sdk")
    _, out = run(client, "/usr/sbin/bm_version | head -2; readlink /opt/sophon/libsophon-current")
    assert out.split("\n")[:3] == [
        "SophonSDK version: V23.07.01",
        "sophon-soc-libsophon : 0.4.9",
        "/opt/sophon/libsophon-0.4.9",
    ]
    fleet.fault("se7-1", "wrong-chip")
    _, out = run(client, "grep -m1 'model name' /proc/cpuinfo; /usr/sbin/bm_version | grep U-Boot")
    assert "model name\t: bm1684\n" in out and out.rstrip().endswith("Sophon BM1684")
    import_sail = "python3 -c 'import sophon.sail'"
    assert run(client, import_sail)[0] == 0  # the SAIL emulator, with numpy, on the box's Python 3.8
    fleet.fault("se7-1", "no-sail")
    status, out = run(client, import_sail)
    assert status != 0 and "No module named 'sophon'" in out
    fleet.fault("se7-1", "heal")
    assert run(client, import_sail)[0] == 0
    _, out = run(client, "grep -m1 'model name' /proc/cpuinfo; readlink /opt/sophon/libsophon-current")
    assert out.split("\n")[:2] == ["model name\t: bm1684x", "/opt/sophon/libsophon-0.5.1"]


def test_inventory_lists_every_box_with_auth_references(sim_fleet):
    fleet = sim_fleet(["se7-small", "se7-ready-int8"])
    doc = yaml.safe_load(fleet.inventory_path.read_text())
    assert doc["hosts"] == {
        "se7-1": {"address": f"10.213.{fleet.state.k}.11"},
        "se7-2": {"address": f"10.213.{fleet.state.k}.12"},
    }
    assert doc["defaults"]["user"] == "linaro"
    assert "linaro" not in fleet.inventory_path.read_text().split("user: linaro", 1)[1]  # no password inline
    assert (Path(doc["defaults"]["become_password_file"]).stat().st_mode & 0o777) == 0o600


def test_down_cleans_up_after_the_simulator_crashed(tmp_path):
    fleet = Fleet.up(tmp_path / "fleet", ["se7-factory", "se7-factory"])
    os.kill(fleet.state.daemon_pid, signal.SIGKILL)  # the sim dies; the boxes keep running
    deadline = time.monotonic() + 10
    while pid_alive(fleet.state.daemon_pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pid_alive(fleet.state.daemon_pid)
    again = Fleet.load(tmp_path / "fleet")
    assert again.down() == []
    assert_nothing_left(again)


def test_cli_up_status_fault_reboot_down(tmp_path):
    state = str(tmp_path / "fleet")
    runner = CliRunner()
    result = runner.invoke(
        cli, ["sim", "up", "--profile", "se7-small:1,se7-int4-only:1", "--state-dir", state, "--json"]
    )
    assert result.exit_code == 0, result.output
    try:
        import json

        up = json.loads(result.stdout)
        assert [b["profile"] for b in up["boxes"]] == ["se7-small", "se7-int4-only"]
        assert up["mirror"].startswith("http://10.213.") and up["manifest"].endswith(
            "models/glm4-9b-sim.yaml"
        )
        result = runner.invoke(cli, ["sim", "reboot", "se7-2", "--state-dir", state])
        assert result.exit_code == 0, result.output
        result = runner.invoke(cli, ["sim", "status", "--json", "--state-dir", state])
        boxes = json.loads(result.stdout)["boxes"]
        assert [b["boot_count"] for b in boxes] == [1, 2]
        result = runner.invoke(cli, ["sim", "fault", "se7-9", "dark", "--state-dir", state])
        assert result.exit_code == 2 and "no box 'se7-9'" in result.output
        result = runner.invoke(cli, ["sim", "up", "--state-dir", state])
        assert result.exit_code == 7 and "already up" in result.output
    finally:
        result = runner.invoke(cli, ["sim", "down", "--state-dir", state])
    assert result.exit_code == 0, result.output
    assert not Path(state).exists()


def test_without_python_3_8_boxes_run_the_hosts_python_with_a_working_sail_and_a_warning(
    tmp_path, monkeypatch
):
    """The fallback on a machine without CPython 3.8 (forced here with SOPHON_FLEET_SIM_PYTHON): the boxes
    run the host's interpreter, with numpy for the SAIL emulator from the sim's site cache, and `sim up`
    says the boxes are not 3.8 — no boot loop, no missing site."""
    host_python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    monkeypatch.setenv("SOPHON_FLEET_SIM_PYTHON", host_python)
    state = str(tmp_path / "fleet")
    result = CliRunner().invoke(
        cli, ["sim", "up", "--profile", "se7-factory:1", "--no-mirror", "--state-dir", state]
    )
    fleet = Fleet.load(state)
    try:
        assert result.exit_code == 0, result.output
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        assert f"the boxes run Python {version}, not 3.8" in result.stderr
        assert fleet.state.python_version == version
        with contextlib.closing(connect(fleet, "se7-1")) as client:
            code, out = run(
                client, "python3 -c 'import sys, sophon.sail; print(\"%d.%d\" % sys.version_info[:2])'"
            )
        assert (code, out.strip()) == (0, version)
        assert fleet.hardware("se7-1").boot_count == 1  # booted once: no reboot loop
    finally:
        assert fleet.down() == []
        assert_nothing_left(fleet)
