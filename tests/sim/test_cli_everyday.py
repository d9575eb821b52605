"""Issue 14's everyday commands on a simulated fleet: status (+--watch), exec (+-b), reboot, logs (+ the
controller's run log, --last), undeploy."""

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
from sim.fleet import ssh_banner
from tests.sim.conftest import connect, needs_root, run

pytestmark = [pytest.mark.sim, needs_root]

SOPHON_FLEET = str(Path(sys.executable).with_name("sophon-fleet"))


def invoke(*args, env=None):
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def wait_down(fleet, name, timeout=10.0):
    deadline = time.monotonic() + timeout
    while ssh_banner(fleet.state.box(name).address) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_status_exec_and_reboot(sim_fleet, tmp_path):
    fleet = sim_fleet(["se7-factory", "se7-small"])
    fleet.power_off("se7-2")
    wait_down(fleet, "se7-2")
    inv = str(fleet.inventory_path)
    fast = ("--connect-timeout", "2")

    code, out, _ = invoke("status", "-i", inv, *fast, "--json")
    hosts = {h["host"]: h for h in json.loads(out)["hosts"]}
    assert code == 4
    assert hosts["se7-1"]["reachable"] and hosts["se7-1"]["heaps"]["total"] == 9070
    assert hosts["se7-1"]["heaps_in_use"] == {"npu": 0, "vpu": 0, "vpp": 0, "total": 0, "usable": 0}
    assert hosts["se7-1"]["uptime_s"] > 0 and hosts["se7-1"]["runtime"] is None
    assert hosts["se7-2"]["reachable"] is False and "connection refused" in hosts["se7-2"]["error"]
    code, out, _ = invoke("status", "-i", inv, *fast)
    assert "se7-1  up" in out and "3950/2048/3072" in out and "se7-2  unreachable" in out

    # --watch refreshes until Ctrl-C, which ends it cleanly
    proc = subprocess.Popen(
        [SOPHON_FLEET, "status", "-i", inv, "-l", "se7-1", "--watch", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        headers = 0
        for line in proc.stdout:
            headers += line.startswith("host ")
            if headers == 2:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert headers == 2 and proc.returncode == 0 and "Traceback" not in err

    # exec: per-box output, a recap, -b for sudo, the worst exit code
    fleet.power_on("se7-2")
    fleet.wait_ready(names=["se7-2"])
    code, out, _ = invoke("exec", "-i", inv, "--", "hostname")
    assert code == 0 and "se7-1 | se7-1" in out and "se7-2 | se7-2" in out and "exec recap" not in out
    code, out, _ = invoke(
        "exec",
        "-i",
        inv,
        "-l",
        "se7-1",
        "-b",
        "--",
        "cat",
        "/sys/kernel/debug/ion/bm_npu_heap_dump/total_mem",
    )
    assert code == 0 and f"se7-1 | {3950 << 20}" in out
    code, out, _ = invoke("exec", "-i", inv, "--json", "--", "test $(hostname) = se7-1")
    doc = json.loads(out)
    assert code == 1 and doc["schema"] == "sophon-fleet/exec/v1"
    assert {h["host"]: h["exit_code"] for h in doc["hosts"]} == {"se7-1": 0, "se7-2": 1}

    # reboot: refused without --yes off a terminal; with --yes, a new boot_id, verified
    before = fleet.hardware("se7-1").boot_id
    code, _, err = invoke("reboot", "-i", inv, "-l", "se7-1")
    assert (
        code == 2 and "1 box would be rebooted (se7-1)" in err and fleet.hardware("se7-1").boot_id == before
    )
    code, out, err = invoke("reboot", "-i", inv, "-l", "se7-1", "--yes", "--json")
    assert code == 0, err
    (entry,) = json.loads(out)["hosts"]
    after = fleet.hardware("se7-1")
    assert entry["old_boot_id"] == before and entry["new_boot_id"] == after.boot_id != before

    # a wrong sudo password on one box: no box reboots at all
    data = yaml.safe_load(fleet.inventory_path.read_text())
    data["hosts"]["se7-2"]["become_password_env"] = "NOT_SET_ANYWHERE"
    data["defaults"].pop("become_password_file")
    data["hosts"]["se7-1"]["become_password_file"] = str(fleet.state.dir / "become_password")
    mixed = tmp_path / "mixed.yml"
    mixed.write_text(yaml.safe_dump(data))
    boots = {n: fleet.hardware(n).boot_count for n in ("se7-1", "se7-2")}
    code, out, _ = invoke("reboot", "-i", str(mixed), "--yes")
    assert code == 1 and "se7-2: sudo needs a password and none was given" in out
    assert "sudo was refused on another box" in out
    assert {n: fleet.hardware(n).boot_count for n in ("se7-1", "se7-2")} == boots


def test_logs_run_log_and_undeploy(sim_fleet):
    fleet = sim_fleet(["se7-factory"])
    inv = str(fleet.inventory_path)
    client = connect(fleet, "se7-1")
    runtime = "/data/sophon-fleet/runtime"
    marker = '{"version": "0.1.0-bbb", "variant": "int4", "selftest": {"tps": 9.5}}'
    setup = (
        f"mkdir -p {runtime}/0.1.0-aaa {runtime}/0.1.0-bbb",
        f"echo '{marker}' > {runtime}/0.1.0-bbb/.deployed",
        f"ln -sfn 0.1.0-bbb {runtime}/current",
        f"printf '0.1.0-aaa\\n0.1.0-bbb\\n' > {runtime}/history",
    )
    status, said = run(client, " && ".join(setup))
    assert status == 0, said

    code, out, err = invoke("logs", "se7-1", "-i", inv, "--json")
    logs = json.loads(out)["logs"]
    assert code == 0 and logs["deploy history"] == "0.1.0-aaa\n0.1.0-bbb"
    assert '"tps": 9.5' in logs["live runtime"] and "sophon-chat.service" in logs
    code, out, _ = invoke("status", "-i", inv, "--json")
    assert json.loads(out)["hosts"][0]["runtime"] == "0.1.0-bbb" and '"variant": "int4"' in out

    # the controller's own log of its last run: the command line, each box's commands and timings
    code, out, _ = invoke("logs", "--last")
    assert code == 0 and "status ..." in out and "se7-1: run:" in out and "se7-1: exit 0 after" in out
    assert "linaro\n" not in out

    # undeploy: never the live one; one version; then everything
    code, out, _ = invoke("undeploy", "-i", inv, "0.1.0-bbb")
    assert code == 3 and "0.1.0-bbb is the live runtime" in out
    code, out, _ = invoke("undeploy", "-i", inv, "../../boot")
    assert code == 3 and "is not on the box" in out
    assert run(client, "ls /boot")[0] == 0 and "emmcboot.itb" in run(client, "ls /boot")[1]
    code, out, _ = invoke("undeploy", "-i", inv, "0.1.0-aaa", "--json")
    assert code == 0 and json.loads(out)["hosts"][0]["removed"] == ["0.1.0-aaa"]
    code, out, _ = invoke("undeploy", "-i", inv, "--all", "--json")
    assert code == 0 and json.loads(out)["hosts"][0]["removed"] == ["0.1.0-bbb"]
    assert run(client, f"ls -A {runtime}")[1].strip() == ""
    client.close()
