"""One simulated box with `--engine cmodel`: the mirror serves the real compiled tiny GLM-4, and the normal
CLI pulls it, pushes it, deploys the runtime (whose selftest runs on libbmrt + the BM1684X cmodel on the box)
and chats with it."""

from __future__ import annotations

import json

import pytest

from tests.sim.conftest import connect, needs_root, run
from tests.sim.flows import invoke, pull_and_push, use_fleet

pytestmark = [pytest.mark.vendor, pytest.mark.sim, needs_root]


def test_a_cmodel_box_is_deployed_and_chats_through_the_cli(
    sim_fleet, compiled, runtime_dir, tool_cache, tmp_path, monkeypatch
):
    monkeypatch.setenv("SOPHON_FLEET_CACHE", str(tool_cache))  # the compiled stand-ins' compiler venv
    fleet = sim_fleet(["se7-ready-int8"], mirror=True, engine="cmodel")
    use_fleet(fleet, tmp_path, monkeypatch)
    _, version = run(connect(fleet, "se7-1"), "python3 -c 'import sophon.sail as s; print(s.__version__)'")
    assert version.strip() == "3.8.0+bmrt-cmodel"
    pull_and_push(fleet, "int4")
    code, out, err = invoke("deploy", "-i", str(fleet.inventory_path), "--json")
    assert code == 0, out + err
    (host,) = json.loads(out)["hosts"]
    assert host["ok"] and host["selftest"]["ok"] and host["selftest"]["tokens"] == 8, host
    code, out, err = invoke("chat", "se7-1", "-i", str(fleet.inventory_path), "--prompt", "hi", "--json")
    assert code == 0, out + err
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert events[0]["event"] == "ready" and events[0]["model"] == "glm4-9b_int4_1dev.bmodel"
    assert events[-1]["event"] == "done" and events[-1]["tokens"] >= 1
    assert "".join(e["text"] for e in events if e["event"] == "token")
