"""`deploy` through the CLI on a simulated fleet: fresh, up to date, SAIL wheel when missing, rollback."""

from __future__ import annotations

import hashlib
import json
import zipfile

import pytest

from provision.runtime import deploy as deploymod
from tests.sim.conftest import connect, needs_root, run
from tests.sim.flows import invoke, pull_and_push, use_fleet

pytestmark = [pytest.mark.sim, needs_root]

RUNTIME = "/data/sophon-fleet/runtime"


@pytest.fixture
def fleet(sim_fleet, tmp_path, monkeypatch):
    """Two int8-ready boxes with the int8 stand-in pulled, pushed and verified; se7-2 lacks SAIL."""
    fleet = sim_fleet(["se7-ready-int8", "se7-ready-int8"], mirror=True)
    use_fleet(fleet, tmp_path, monkeypatch)
    fleet.fault("se7-2", "no-sail")
    pull_and_push(fleet, "int8")
    return fleet


def deploy_json(fleet, *args):
    code, out, _ = invoke("deploy", "-i", str(fleet.inventory_path), "--json", *args)
    return code, {h["host"]: h for h in json.loads(out)["hosts"]}


def test_fresh_then_up_to_date_then_rollback(fleet, monkeypatch):
    code, hosts = deploy_json(fleet)
    assert code == 0, hosts
    first = hosts["se7-1"]["version"]
    assert {h["status"] for h in hosts.values()} == {"deployed"}
    assert all(h["selftest"]["ok"] and h["selftest"]["tokens"] > 0 for h in hosts.values())
    assert hosts["se7-2"]["version"].endswith("-sail")  # `import sophon.sail` failed: the wheel came along
    client = connect(fleet, "se7-1")
    _, out = run(client, f"readlink {RUNTIME}/current; ls {RUNTIME}/{first}/app/chat/__main__.py")
    assert out.split() == [first, f"{RUNTIME}/{first}/app/chat/__main__.py"]
    _, out = run(
        client,
        f"cd {RUNTIME}/current/app && ../venv/bin/python -c 'import numpy, tiktoken; print(numpy.__file__)'",
    )
    assert f"{RUNTIME}/{first}/venv/" in out  # the wheelhouse's numpy, not the box's

    code, hosts = deploy_json(fleet)
    assert code == 0 and {h["status"] for h in hosts.values()} == {"up-to-date"}
    assert hosts["se7-1"]["transferred"] == 0
    assert {h["selftest"] for h in hosts.values()} == {None}  # nothing ran: no old numbers passed off as new
    code, out, _ = invoke("deploy", "-i", str(fleet.inventory_path))
    assert code == 0 and "already in place; nothing ran" in out and "tok/s" not in out

    real_archive = deploymod.app_archive
    monkeypatch.setattr(deploymod, "app_archive", lambda cache_dir: with_extra_file(*real_archive(cache_dir)))
    code, hosts = deploy_json(fleet, "--limit", "se7-1")  # a new runtime release: one more file in the app
    assert code == 0 and hosts["se7-1"]["status"] == "deployed"
    second = hosts["se7-1"]["version"]
    assert second != first
    code, hosts = deploy_json(fleet, "--limit", "se7-1", "--rollback")
    assert code == 0 and hosts["se7-1"] == {**hosts["se7-1"], "status": "rolled-back", "version": first}
    _, out = run(client, f"readlink {RUNTIME}/current")
    assert out.strip() == first


def with_extra_file(path, contains):
    extra = b"# release notes\n"
    target = path.with_name("app-next.zip")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("app/chat/_release.py", extra)
    return target, {
        **contains,
        "app/chat/_release.py": {"size": len(extra), "sha256": hashlib.sha256(extra).hexdigest()},
    }


def test_no_model_on_the_box_says_what_to_run(sim_fleet, tmp_path, monkeypatch):
    fleet = sim_fleet(["se7-ready-int8"], mirror=True)
    use_fleet(fleet, tmp_path, monkeypatch)
    code, hosts = deploy_json(fleet)
    assert code == 3
    assert "no verified glm4-9b-sim model" in hosts["se7-1"]["error"]
    assert "assets push" in hosts["se7-1"]["hint"]


def test_a_second_deploy_while_one_runs_is_refused_and_history_has_one_entry(fleet):
    """The box's runtime lock. Deploy A runs in a child process; once it reports its
    `push` stage, deploy B (in-process) must be refused, naming A; A then finishes alone."""
    import os
    import subprocess
    import sys
    import time

    args = ["deploy", "-i", str(fleet.inventory_path), "--limit", "se7-1"]
    first = subprocess.Popen(
        [sys.executable, "-c", "from provision.cli.main import cli; cli()", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, COLUMNS="200"),
    )
    try:
        seen = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = first.stdout.readline()
            assert line, f"deploy A ended before its push stage: {''.join(seen)}"
            seen.append(line)
            if "se7-1: push" in line:
                break
        code, hosts = deploy_json(fleet, "--limit", "se7-1")
        assert code == 3, hosts  # locked: not ready for this run, nothing changed
        assert "se7-1 is locked: deploy by" in hosts["se7-1"]["error"], hosts
        assert first.wait(timeout=300) == 0, "".join(seen) + first.stdout.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        first.stdout.close()
    client = connect(fleet, "se7-1")
    _, out = run(client, f"cat {RUNTIME}/history; ls {RUNTIME}/../locks")
    client.close()
    assert len([line for line in out.splitlines() if line.strip() and "lock" not in line]) == 1, out
    assert "runtime.lock" not in out
