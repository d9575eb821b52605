"""`serve up|down|status|key` on a simulated box that boots real systemd: the unit (systemd-analyze verify),
the key (0600, required off loopback), the API through the official `openai` client and curl, restart after
`kill -9` and after `sim reboot`, and `deploy` restarting the service on a new version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import openai
import pytest

from provision.runtime import deploy as deploymod
from tests.sim.conftest import connect, needs_root, run, sudo
from tests.sim.flows import invoke, pull_and_push, use_fleet
from tests.sim.systemd245 import ensure_systemd_245, verify_command
from tests.sim.test_deploy import with_extra_file

pytestmark = [pytest.mark.sim, needs_root]

UNIT = "/etc/systemd/system/sophon-chat.service"
MODEL = "glm4-9b-sim"  # the simulated fleet's manifest (tests.sim.flows.use_fleet)


@pytest.fixture
def served(sim_fleet, tmp_path, monkeypatch):
    """One int4-ready box: assets pushed, runtime deployed, `serve up` done."""
    fleet = sim_fleet(["se7-ready-int8"], mirror=True)
    use_fleet(fleet, tmp_path, monkeypatch)
    pull_and_push(fleet, "int4")
    code, out, err = invoke("deploy", "-i", str(fleet.inventory_path))
    assert code == 0, out + err
    code, out, err = invoke("serve", "up", "-i", str(fleet.inventory_path), "--json")
    assert code == 0, out + err
    host = json.loads(out)["hosts"][0]
    assert host["ready"] and host["changes"] == ["unit", "key", "enable", "start"]
    return fleet


def serve_json(fleet, command: str, *args: str) -> dict:
    code, out, err = invoke("serve", command, "-i", str(fleet.inventory_path), "--json", *args)
    assert code == 0, out + err
    return json.loads(out)["hosts"][0]


def box_key(fleet) -> str:
    code, out, _ = invoke("serve", "key", "-i", str(fleet.inventory_path))
    assert code == 0
    return out.strip()


def base_url(fleet) -> str:
    return f"http://{fleet.state.box('se7-1').address}:8000"


def wait_until(check, timeout: float = 60.0, what: str = "condition"):
    deadline, delay = time.monotonic() + timeout, 0.1
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached in {timeout} s"
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


def test_serve_up_is_a_real_enabled_unit_and_a_second_up_changes_nothing(served, tmp_path):
    client = connect(served, "se7-1")
    code, out = run(client, f"systemd-analyze verify {UNIT} && echo verified")
    assert code == 0 and out.strip().endswith("verified"), out
    # the boxes' own systemd 245 (Ubuntu 20.04) knows every directive of the unit: it names the unit's file in
    # a warning for any it does not know (a copy with a 247 directive shows it would), and exits 0 either way
    tools = served.state.box_paths("se7-1").dir / "systemd-245"  # the box's directory is visible inside it
    shutil.copytree(ensure_systemd_245(Path(os.environ["SOPHON_FLEET_SIM_CACHE"])), tools)
    newer = "/tmp/sophon-chat-newer.service"
    run(client, f"sed 's/^Restart=on-failure$/&\\nProtectProc=invisible/' {UNIT} > {newer}")
    for unit, complaint in ((UNIT, ""), (newer, "Unknown key name 'ProtectProc'")):
        _, out = sudo(client, verify_command(tools, unit))
        about_it = [line for line in out.splitlines() if Path(unit).name in line]
        assert out.rstrip().endswith("rc=0"), out
        assert [complaint in line for line in about_it] == ([True] if complaint else []), out
    _, out = run(client, "systemctl is-enabled sophon-chat.service; systemctl is-active sophon-chat.service")
    assert out.split() == ["enabled", "active"]
    _, out = run(client, "stat -c '%a %U' /data/sophon-fleet/serve/api-key")
    assert out.strip() == "600 linaro"
    _, out = run(client, "systemctl show sophon-chat.service -p User -p Restart -p ExecStart")
    assert "User=linaro" in out and "Restart=on-failure" in out and "runtime/current/venv/bin/python" in out
    again = serve_json(served, "up")
    assert again["changes"] == [] and again["ready"]
    book = tmp_path / "serve.yml"
    book.write_text("steps:\n  - serve: {variant: int4}\n")
    code, out, err = invoke("play", str(book), "-i", str(served.inventory_path), "--json")
    assert code == 0, out + err
    assert [r["outcome"] for r in json.loads(out)["results"]] == ["ok"]  # the playbook step: as planned
    status = serve_json(served, "status")
    assert status["unit"]["active"] == "active" and status["health"]["model"] == MODEL
    assert status["health"]["variant"] == "int4" and status["health"]["busy"] is False


def test_the_api_needs_the_key_off_loopback_and_answers_openai_and_curl(served, request):
    base, key = base_url(served), box_key(served)
    wrong = openai.OpenAI(base_url=base + "/v1", api_key="sk-wrong", max_retries=0, timeout=30)
    with wrong, pytest.raises(openai.AuthenticationError) as caught:
        wrong.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    api = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)
    request.addfinalizer(api.close)
    answer = api.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "你好"}], max_tokens=5
    )
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 5
    chunks = list(
        api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "你好"}], max_tokens=5, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == answer.choices[0].message.content
    curl = shutil.which("curl")
    assert curl, "curl is needed (make setup installs it)"
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "你好"}], "max_tokens": 3})
    out = subprocess.run(
        [curl, "-sS", "-H", f"Authorization: Bearer {key}", "-d", body, base + "/v1/chat/completions"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert json.loads(out)["usage"]["completion_tokens"] == 3
    status = subprocess.run(
        [curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", base + "/v1/models"],
        capture_output=True,
        text=True,
    ).stdout
    assert status == "401"  # no key at all


def test_the_service_comes_back_after_kill_9_and_after_a_reboot(served):
    first = serve_json(served, "status")["unit"]
    client = connect(served, "se7-1")
    code, out = sudo(client, f"kill -9 {first['main_pid']}")
    assert code == 0, out
    after = wait_until(
        lambda: (
            (s := serve_json(served, "status"))["ready"] and s["unit"]["main_pid"] != first["main_pid"] and s
        ),
        what="a restarted, ready service",
    )
    assert after["unit"]["restarts"] == first["restarts"] + 1
    boot_id = served.reboot("se7-1")
    assert boot_id
    back = wait_until(lambda: (s := serve_json(served, "status"))["ready"] and s, what="ready after reboot")
    assert back["unit"]["active"] == "active" and back["unit"]["restarts"] == 0  # a new boot, a fresh start


def test_a_new_deploy_restarts_the_service_on_the_new_version(served, monkeypatch):
    client = connect(served, "se7-1")
    before = serve_json(served, "status")["unit"]["main_pid"]
    real_archive = deploymod.app_archive  # a new runtime release: one more file in the app
    monkeypatch.setattr(deploymod, "app_archive", lambda cache_dir: with_extra_file(*real_archive(cache_dir)))
    code, out, err = invoke("deploy", "-i", str(served.inventory_path), "--json")
    assert code == 0, out + err
    version = json.loads(out)["hosts"][0]["version"]
    status = wait_until(lambda: (s := serve_json(served, "status"))["ready"] and s, what="ready after deploy")
    assert status["unit"]["main_pid"] != before
    _, out = run(client, f"readlink /proc/{status['unit']['main_pid']}/cwd")
    assert version in out  # the restarted server runs the new version's code
    down = serve_json(served, "down")
    assert down["unit"]["active"] == "inactive" and down["unit"]["enabled"] == "disabled"
