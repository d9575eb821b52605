"""On a fleet made by `sim up` itself: its inventory alone is enough; the sim's usage
errors exit 2; the small texts."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from click.testing import CliRunner

from provision.cli.main import cli
from sim.fleet import Fleet
from tests.sim.conftest import assert_nothing_left, needs_root

pytestmark = [pytest.mark.sim, needs_root]


def invoke(*args, input=None):
    result = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def sim_up(tmp_path):
    """A fleet brought up by the `sim up` command (mirror on); `sim down` and a leak check at the end."""
    state = tmp_path / "fleet"
    code, out, err = invoke("sim", "up", "--profile", "se7-factory:1", "--state-dir", str(state))
    assert code == 0, err
    try:
        yield state, out, err
    finally:
        fleet = Fleet.load(state)
        assert invoke("sim", "down", "--state-dir", str(state))[0] == 0
        assert_nothing_left(fleet)


def test_the_sim_inventory_alone_is_enough(sim_up, tmp_path):
    state, printed, err = sim_up
    assert not {"SOPHON_FLEET_MODELS", "SOPHON_FLEET_MODEL"} & set(os.environ)  # as on a fresh machine
    inv = str(state / "inventory.yml")
    printed_inventory = yaml.safe_load(printed)
    assert printed_inventory["models"] == str(state / "models")  # the inventory names the stand-ins
    assert printed_inventory["model"] == "glm4-9b-sim"
    assert "export SOPHON_FLEET_MODEL" not in err and f"preflight -i {inv}" in err

    # the stand-ins come from the sim's mirror, not the vendor's servers (--no-dfss: no way out)
    code, out, err = invoke("assets", "pull", "-i", inv, "--variant", "int4", "--no-dfss", "--json")
    assert code == 0, err
    sources = {f["source"] for f in json.loads(out)["files"]}
    assert sources and all(s.startswith("http://10.213.") for s in sources), sources
    assert invoke("assets", "verify", "-i", inv, "--variant", "int4")[0] == 0
    code, out, err = invoke("assets", "push", "-i", inv, "--variant", "int4")
    assert code == 0, err
    code, out, _ = invoke("preflight", "-i", inv, "--json")
    assert code == 0 and json.loads(out)["hosts"][0]["status"] == "ready-int4"

    # `sim up --help`'s example is a command line that parses
    code, help_text, _ = invoke("sim", "up", "--help")
    assert "sophon-fleet preflight -i /run/sophon-fleet-sim/inventory.yml" in help_text
    assert "sophon-fleet -i" not in help_text

    # `sim up` on a fleet that is up: the hint names this --state-dir
    code, _, err = invoke("sim", "up", "--boxes", "1", "--state-dir", str(state))
    assert code == 7 and f"sim down --state-dir {state}" in err and f"-i {inv}" in err
    code, _, err = invoke("sim", "status", "--state-dir", str(tmp_path / "none"))
    assert code == 7 and f"--state-dir {tmp_path / 'none'}" in err


def test_sim_usage_errors_exit_2_and_the_mirror_takes_link_faults(sim_up):
    state, _, _ = sim_up
    where = ("--state-dir", str(state))
    code, out, err = invoke("sim", "fault", "mirror", "rate", "1", *where)
    assert code == 0 and "mirror: link limited to 1 Mbit/s" in err
    assert invoke("sim", "fault", "mirror", "rate", "0", *where)[0] == 0
    code, _, err = invoke("sim", "fault", "mirror", "dark", *where)
    assert code == 2 and "the mirror node takes only" in err
    code, _, err = invoke("sim", "fault", "se7-9", "dark", *where)
    assert code == 2 and "no box 'se7-9'" in err
    code, _, err = invoke("sim", "fault", "se7-1", "rate", *where)
    assert code == 2 and "needs a number" in err
    code, _, err = invoke("sim", "up", "--profile", "se7-nope", "--state-dir", str(state.parent / "other"))
    assert code == 2 and "unknown profile 'se7-nope'" in err


def test_one_box_is_one_box(sim_up):
    state, _, _ = sim_up
    code, out, err = invoke("memory", "apply", "-i", str(state / "inventory.yml"), input="")
    assert code == 2 and "1 box would be rebooted (se7-1)" in err and "boxes" not in err
