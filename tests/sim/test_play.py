"""Playbooks through the CLI on a simulated fleet: the whole flow, a second run that changes nothing,
a failing box with max_fail_percent, and schema errors that stop before anything connects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.sim.conftest import assert_nothing_left, needs_root
from tests.sim.flows import invoke, use_fleet

pytestmark = [pytest.mark.sim, needs_root]

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"


def play_json(fleet, playbook, *args):
    code, out, err = invoke(
        "play", str(PLAYBOOKS / playbook), "-i", str(fleet.inventory_path), "--json", *args
    )
    return code, json.loads(out), err


def outcomes(doc, step):
    return {r["host"]: r["outcome"] for r in doc["results"] if r["step"] == step}


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("user")


@pytest.fixture
def as_fleet_user(mixed_fleet, user_dir, monkeypatch):
    """A test of the module's fleet runs as the user the fleet was set up for (the root conftest gives
    every test a fresh home and cache)."""
    use_fleet(mixed_fleet, user_dir, monkeypatch)
    return mixed_fleet


@pytest.fixture(scope="module")
def mixed_fleet(tmp_path_factory, user_dir):
    """A small box that needs a layout, one ready for int8, one whose layout fits int4 only."""
    from sim.fleet import Fleet

    fleet = Fleet.up(
        tmp_path_factory.mktemp("fleet"), ["se7-small", "se7-ready-int8", "se7-int4-only"], mirror=True
    )
    with pytest.MonkeyPatch.context() as monkeypatch:
        try:
            use_fleet(fleet, user_dir, monkeypatch)
            yield fleet
        finally:
            assert fleet.down() == []
            assert_nothing_left(fleet)


def test_auto_playbook_end_to_end_then_a_second_run_changes_nothing(as_fleet_user):
    fleet = as_fleet_user
    boot_before = {b.name: fleet.hardware(b.name).boot_id for b in fleet.boxes}
    code, doc, err = play_json(fleet, "glm4-auto.yml")
    assert code == 0, err
    assert outcomes(doc, "memory") == {"se7-1": "changed", "se7-2": "ok", "se7-3": "ok"}
    assert fleet.hardware("se7-1").heaps == [7615, 3071, 3071]  # the recommended layout, clipped to max
    assert fleet.hardware("se7-1").boot_id != boot_before["se7-1"]
    assert fleet.hardware("se7-2").boot_id == boot_before["se7-2"]  # no reboot where nothing was needed
    assert set(outcomes(doc, "assets").values()) == {"changed"}
    assert set(outcomes(doc, "deploy").values()) == {"changed"}
    assert {b["host"]: b["variant"] for b in doc["bench"]} == {
        "se7-1": "int8",
        "se7-2": "int8",
        "se7-3": "int4",
    }
    assert set(outcomes(doc, "chat-check").values()) == {"ok"}
    assert doc["changed"] is True and doc["aborted"] is None

    boot_after = {b.name: fleet.hardware(b.name).boot_id for b in fleet.boxes}
    code, doc, err = play_json(fleet, "glm4-auto.yml")
    assert code == 0, err
    assert doc["changed"] is False
    assert {r["outcome"] for r in doc["results"]} == {"ok"}
    assert {b.name: fleet.hardware(b.name).boot_id for b in fleet.boxes} == boot_after  # no reboot
    code, out, _ = invoke("play", str(PLAYBOOKS / "glm4-auto.yml"), "-i", str(fleet.inventory_path))
    assert code == 0 and "no changes" in out and "PLAY RECAP" in out


def test_dry_run_reads_only(as_fleet_user):
    fleet = as_fleet_user
    code, doc, _ = play_json(fleet, "glm4-int4.yml", "--dry-run")
    assert code == 0
    assert {r["step"] for r in doc["results"] if r["outcome"] == "skipped"} >= {
        "assets",
        "deploy",
        "chat-check",
    }


def test_a_failing_box_stops_the_rollout_at_max_fail_percent(sim_fleet, tmp_path, monkeypatch):
    fleet = sim_fleet(["se7-ready-int8", "se7-factory", "se7-factory"], mirror=True)
    use_fleet(fleet, tmp_path, monkeypatch)
    fleet.fault("se7-2", "wrong-chip")
    code, doc, _ = play_json(fleet, "glm4-int4.yml")  # max_fail_percent 0
    assert code == 3
    assert outcomes(doc, "preflight") == {"se7-1": "ok", "se7-2": "failed", "se7-3": "ok"}
    assert doc["aborted"].startswith("stopped after step preflight")
    assert {r["step"] for r in doc["results"]} == {"preflight"}
    assert doc["recap"]["se7-2"]["failed"] == 1

    code, doc, _ = play_json(fleet, "preflight.yml", "--max-fail-percent", "50")
    assert code == 3 and doc["aborted"] is None


def test_schema_errors_stop_before_anything_connects(tmp_path):
    book = tmp_path / "bad.yml"
    book.write_text("name: x\nsteps:\n  - preflight: {}\n  - deploy: {keep: lots}\n")
    inventory = tmp_path / "inv.yml"
    inventory.write_text("hosts:\n  nowhere: {address: 127.0.0.9, port: 1}\n")
    code, out, err = invoke("play", str(book), "-i", str(inventory))
    assert code == 2
    assert f"{book}:4: steps[1].deploy.keep: must be a number, not text" in err


def test_the_int4_playbook_leaves_boxes_already_fit_for_int4_alone(sim_fleet, tmp_path, monkeypatch):
    # factory boxes (npu + vpp 7022 MiB >= 5860) once were rebooted into the recommended layout
    fleet = sim_fleet(["se7-factory", "se7-small"], mirror=True)
    use_fleet(fleet, tmp_path, monkeypatch)
    code, doc, err = play_json(fleet, "glm4-int4.yml", "--dry-run")
    assert code == 0, err
    memory = {r["host"]: r for r in doc["results"] if r["step"] == "memory"}
    assert memory["se7-1"]["outcome"] == "ok" and "already fits int4" in memory["se7-1"]["message"]
    assert memory["se7-2"]["outcome"] == "changed" and "would apply" in memory["se7-2"]["message"]
    boot_id = fleet.hardware("se7-1").boot_id
    code, doc, err = play_json(fleet, "glm4-int4.yml", "--limit", "se7-1")
    assert code == 0, err
    assert fleet.hardware("se7-1").boot_id == boot_id and fleet.hardware("se7-1").heaps == [3950, 2048, 3072]
