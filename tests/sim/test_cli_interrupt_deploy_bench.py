"""The one Ctrl-C rule for `deploy` and `bench`, the last-bench record `status` shows, and `bench` /
`sim status` at 80 columns. SIGINT is sent at the stage in question, awaited from the command's own
progress output (stderr); the child gets SIGINT's default action (a background run inherits it ignored).
And SIGKILL of `deploy` in each of its stages: the runtime in use stays whole, `--break-lock` goes on."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sim.conftest import assert_nothing_left, needs_root
from tests.sim.flows import Hold, invoke, pull_and_push, read_until, use_fleet

pytestmark = [pytest.mark.sim, needs_root]

SOPHON_FLEET = str(Path(sys.executable).with_name("sophon-fleet"))


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("user")


@pytest.fixture(autouse=True)
def as_fleet_user(fleet, user_dir, monkeypatch):
    use_fleet(fleet, user_dir, monkeypatch)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, user_dir):
    """se7-1 with the int4 stand-in pushed (no runtime yet), se7-2 bare."""
    from sim.fleet import Fleet

    fleet = Fleet.up(tmp_path_factory.mktemp("fleet"), ["se7-ready-int8", "se7-int4-only"], mirror=True)
    with pytest.MonkeyPatch.context() as monkeypatch:
        try:
            use_fleet(fleet, user_dir, monkeypatch)
            pull_and_push(fleet, "int4", names=["se7-1"])
            yield fleet
        finally:
            assert fleet.down() == []
            assert_nothing_left(fleet)


def start(*args):
    return subprocess.Popen(
        [SOPHON_FLEET, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def interrupt_at(proc, marker, times=1, timeout=180):
    """Read stderr up to the line with `marker`, send SIGINT (`times` times, each after the command said
    it got the last one), then collect the rest."""
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if marker in line:
                break
        else:
            raise AssertionError(f"never saw {marker!r} in: {''.join(seen)}")
        proc.send_signal(signal.SIGINT)
        if times == 2:
            for line in proc.stderr:
                seen.append(line)
                if "Ctrl-C again to abort now" in line:
                    break
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
        proc.wait()
    return out, "".join(seen) + err


def current_runtime(fleet, name="se7-1"):
    link = fleet.state.box_paths(name).data / "sophon-fleet/runtime/current"
    return link.resolve().name if link.is_symlink() else None


def test_ctrl_c_in_deploy_stops_before_the_next_stage_and_the_summary_prints(fleet):
    inv = str(fleet.inventory_path)
    fleet.fault("se7-1", "rate", "20")  # the runtime bundle takes a while to send: Ctrl-C lands in push
    try:
        proc = start("deploy", "-i", inv)
        out, err = interrupt_at(proc, "se7-1: push")
    finally:
        fleet.fault("se7-1", "rate", "0")
    assert proc.returncode == 130, out + err
    assert "Ctrl-C again to abort now" in err and "Traceback" not in err
    assert "se7-1: install" not in err  # it stopped before the next stage
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("se7-")}
    assert "interrupted" in rows["se7-1"] and "interrupted before install" in rows["se7-1"], out
    assert rows["se7-2"].split()[1] == "failed", out  # every box's state is in the summary
    assert current_runtime(fleet) is None  # nothing was switched
    # the next deploy starts over and completes
    code, out, err = invoke("deploy", "-i", inv, "--limit", "se7-1")
    assert code == 0, out + err
    assert current_runtime(fleet) is not None


def test_a_second_ctrl_c_in_bench_aborts_at_once_with_what_is_known(fleet):
    inv = str(fleet.inventory_path)
    code, out, err = invoke("deploy", "-i", inv, "--limit", "se7-1")  # in place (or made so)
    assert code == 0, out + err
    fleet.fault("se7-1", "slow-tpu", "200")  # a run of 60 tokens takes > 12 s: both Ctrl-Cs land inside it
    try:
        proc = start("bench", "-i", inv, "--limit", "se7-1", "--runs", "3", "--max-new-tokens", "60")
        out, err = interrupt_at(proc, "se7-1: model loaded", times=2, timeout=6)  # at once, not the run
    finally:
        fleet.fault("se7-1", "slow-tpu", "0")
    assert proc.returncode == 130 and "aborting now" in err and "Traceback" not in err
    assert [line.split()[:2] for line in out.splitlines() if line.startswith("se7-")] == [["se7-1", "-"]]
    assert "aborted" in out


def test_ctrl_c_in_bench_keeps_the_runs_done_records_them_and_status_shows_them(fleet):
    inv = str(fleet.inventory_path)
    code, out, err = invoke("deploy", "-i", inv, "--limit", "se7-1")
    assert code == 0, out + err
    fleet.fault("se7-1", "slow-tpu", "100")
    try:
        proc = start("bench", "-i", inv, "--runs", "20", "--max-new-tokens", "8")
        out, err = interrupt_at(proc, "se7-1: run 1:")
    finally:
        fleet.fault("se7-1", "slow-tpu", "0")
    assert proc.returncode == 130, out + err
    assert "Ctrl-C again to abort now" in err and "Traceback" not in err
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("se7-")}
    done = re.search(r"(\d+) of 20 runs \(interrupted\)", rows["se7-1"])
    assert done and 1 <= int(done[1]) < 20 and rows["se7-1"].split()[1] == "int4", out
    assert rows["se7-2"].split()[1] == "-", out  # the bare box: its state, not left out
    # the record in the tool's home, and `status` showing it
    home = Path(os.environ["SOPHON_FLEET_HOME"])
    record = json.loads((home / "bench/se7-1.json").read_text())
    assert record["variant"] == "int4" and record["runs"] == int(done[1]) and record["tps"] > 0
    assert not (home / "bench/se7-2.json").exists() and not list((home / "bench").glob(".*"))
    code, out, err = invoke("status", "-i", inv)
    assert code == 0, out + err
    assert out.splitlines()[0].split()[-2:] == ["last", "bench"], out
    line = next(x for x in out.splitlines() if x.startswith("se7-1"))
    assert f"int4 {record['ftl_s']:.3f} s {record['tps']:.2f} tok/s" in line, out
    assert next(x for x in out.splitlines() if x.startswith("se7-2")).rstrip().endswith("-"), out
    code, out, _ = invoke("status", "-i", inv, "--json")
    hosts = {h["host"]: h for h in json.loads(out)["hosts"]}
    assert hosts["se7-1"]["last_bench"]["variant"] == "int4" and hosts["se7-2"]["last_bench"] is None
    assert hosts["se7-1"]["last_bench"]["tps"] == record["tps"]


def test_bench_and_sim_status_at_80_columns_never_cut_a_value(fleet):
    inv = str(fleet.inventory_path)
    code, out, err = invoke("deploy", "-i", inv, "--limit", "se7-1")
    assert code == 0, out + err
    terminal = {"FORCE_COLOR": "1", "TTY_COMPATIBLE": "1", "COLUMNS": "80", "TERM": "xterm"}
    for env in (terminal, {"COLUMNS": "80"}):  # a terminal 80 columns wide, and a pipe
        code, out, _ = invoke_env(env, "bench", "-i", inv, "--json")
        numbers = {h["host"]: h for h in json.loads(out)["hosts"]}["se7-1"]
        code, out, _ = invoke_env(env, "bench", "-i", inv, "--runs", "1", "--max-new-tokens", "4")
        plain = strip_sgr(out)
        assert "…" not in plain, plain
        line = next(x for x in plain.splitlines() if "se7-1" in x and "int4" in x)
        assert re.search(r"\d+\.\d{3} \(\d+\.\d{3}–\d+\.\d{3}\)", line), plain  # FTL whole, on its row
        assert re.search(r"\d+\.\d{2} \(\d+\.\d{2}–\d+\.\d{2}\)", line), plain  # TPS whole
        assert "1.114 s / 7.489 tok/s" in line, plain
        assert numbers["variant"] == "int4"
        code, out, _ = invoke_env(env, "sim", "status", "--state-dir", str(fleet.state.dir))
        assert code == 0, out
        plain = strip_sgr(out)
        assert "…" not in plain, plain
        for name in ("se7-1", "se7-2"):
            box, hw = fleet.state.box(name), fleet.hardware(name)
            line = next(x for x in plain.splitlines() if x.split() and x.split()[0].strip("│┃ ") == name)
            assert box.address in line and hw.boot_id in line, plain
            assert "/".join(map(str, hw.heaps)) in line, plain


def invoke_env(env, *args):
    from click.testing import CliRunner

    from provision.cli.main import cli

    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def strip_sgr(text):
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


# per stage of `deploy`: what keeps it open long enough to kill the CLI in it (a fault, or a Hold on the one
# box-side command only that stage runs); `install` lasts a second (a venv and its wheels)
KILL_STAGES = {
    "push": ("rate", "20"),  # the bundle's wheels take seconds at 20 Mbit/s
    "install": None,
    "selftest": ("slow-tpu", "500"),  # every graph run 0.5 s longer
    "switch": "hold",  # `ln` of `current` held on the box
}


def whole_runtime(fleet, name="se7-1"):
    """The runtime `current` points at, checked to be a whole deployment (its marker written), or None."""
    version = current_runtime(fleet, name)
    if version is not None:
        marker = fleet.state.box_paths(name).data / "sophon-fleet/runtime" / version / ".deployed"
        assert json.loads(marker.read_text())["version"] == version
    return version


@pytest.mark.parametrize("stage", KILL_STAGES)
def test_kill_9_in_a_deploy_stage_leaves_the_runtime_whole_and_break_lock_finishes(fleet, stage):
    """SIGKILL of `deploy` while it is in `stage` (awaited in its progress output; held there by a fault or a
    Hold): `current` is unchanged, or (killed in the switch, which the box then finishes) the new version
    whole; the runtime lock stays, a plain `deploy` is refused naming it, and `deploy --break-lock` (the
    owner's pid is gone) deploys and self-tests the runtime."""
    inv = ("-i", str(fleet.inventory_path), "--limit", "se7-1")
    assert invoke("undeploy", *inv, "--all")[0] == 0  # every stage starts from a box without a runtime
    assert current_runtime(fleet) is None
    how = KILL_STAGES[stage]
    hold = Hold(fleet, "se7-1", "ln", (".current.tmp",)) if how == "hold" else None
    if isinstance(how, tuple):
        fleet.fault("se7-1", *how)
    proc = start("deploy", *inv)
    seen: list[str] = []
    try:
        read_until(proc, stage, seen)
        if hold is not None:
            hold.wait_held()
        proc.kill()
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
        fleet.fault("se7-1", "heal")
    assert proc.returncode == -signal.SIGKILL, "".join(seen) + err
    if hold is not None:
        hold.wait_released()  # the box finishes the command it was running when the CLI died
        hold.remove()
    assert (whole_runtime(fleet) is not None) == (stage == "switch")
    lock = fleet.state.box_paths("se7-1").data / "sophon-fleet/locks/runtime.lock"
    assert lock.exists()

    code, out, err = invoke("deploy", *inv, "--json")
    (host,) = json.loads(out)["hosts"]
    assert code == 3 and "is locked: deploy by" in host["error"], out + err
    code, out, err = invoke("deploy", *inv, "--break-lock", "--json")
    assert code == 0, out + err
    (host,) = json.loads(out)["hosts"]
    assert host["status"] == ("up-to-date" if stage == "switch" else "deployed"), host
    assert whole_runtime(fleet) == host["version"] and not lock.exists()
