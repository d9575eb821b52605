"""Every command has --json, one document with a versioned `schema`, the same names for the
same things; item 8: -v/-vv anywhere, -v shows each box's commands and timings with secrets masked."""

from __future__ import annotations

import json

import click
import pytest
import yaml
from click.testing import CliRunner

from provision.cli.main import cli
from tests.sim.conftest import needs_root

pytestmark = [pytest.mark.sim, needs_root]


def invoke(*args, env=None):
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def leaf_commands(group=cli, path=()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from leaf_commands(command, (*path, name))
        else:
            yield (*path, name), command


def test_every_command_has_json():
    missing = [" ".join(p) for p, c in leaf_commands() if not any(o.name == "as_json" for o in c.params)]
    assert missing == []


def test_every_json_document_has_a_versioned_schema_and_shared_names(sim_fleet, tmp_path):
    fleet = sim_fleet(["se7-factory"], mirror=True)
    inv = str(fleet.inventory_path)
    state = ("--state-dir", str(fleet.state.dir))
    documents = {}
    for args in (
        ["inventory", "-i", inv],
        ["preflight", "-i", inv],
        ["doctor", "se7-1", "-i", inv],
        ["memory", "plan", "-i", inv],
        ["assets", "pull", "-i", inv, "--variant", "int4", "--no-dfss"],
        ["assets", "verify", "-i", inv, "--variant", "int4"],
        ["assets", "ls"],
        ["assets", "pin", "-i", inv, "--variant", "int4"],
        ["sim", "status", *state],
        ["sim", "fault", "se7-1", "slow-tpu", "5", *state],
        ["sim", "reboot", "se7-1", *state],
    ):
        code, out, err = invoke(*args, "--json")
        assert code == 0, (args, err)
        doc = json.loads(out)  # one document, nothing else on stdout
        name = "-".join(a for a in args[:2] if not a.startswith("-") and a != "se7-1")
        assert doc["schema"] == f"sophon-fleet/{name}/v1", (args, doc.get("schema"))
        documents[name] = doc
    assert isinstance(documents["assets-verify"]["files"], list)  # no more bare list
    # heaps have the same shape in the simulator's status and in preflight
    sim_heaps = documents["sim-status"]["boxes"][0]["heaps"]
    assert sim_heaps == documents["preflight"]["hosts"][0]["facts"]["heaps"]["now"]
    assert sim_heaps == {"npu": 3950, "vpu": 2048, "vpp": 3072, "total": 9070, "usable": 7022}
    # the variant reads `auto` in the JSON as in the table
    assert documents["inventory"]["hosts"][0]["variant"] == "auto"
    assert documents["sim-fault"]["faults"] == ["slow-tpu"]
    assert documents["sim-reboot"]["boot_id"] == fleet.hardware("se7-1").boot_id


def test_verbosity_anywhere_shows_commands_and_timings_without_secrets(sim_fleet, tmp_path, monkeypatch):
    fleet = sim_fleet(["se7-factory"])
    data = yaml.safe_load(fleet.inventory_path.read_text())
    del data["defaults"]["become_password_file"]
    data["defaults"]["become_password_env"] = "SE7_SUDO"
    inv = tmp_path / "inv.yml"
    inv.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("SE7_SUDO", "linaro")
    quiet = invoke("preflight", "-i", str(inv))
    assert "run:" not in quiet[2]
    for args in (["-v", "preflight", "-i", str(inv)], ["preflight", "-i", str(inv), "-v"]):
        code, out, err = invoke(*args)
        assert code == 0, err
        # the sim's sudo password is the user's name: masked wherever it shows, even in user@address
        assert "se7-1: connected to ***@" in err and " in 0." in err
        assert "se7-1: run: sh -c" in err and "se7-1: exit 0 after" in err
        assert "paramiko" not in err  # the libraries' detail is -vv
        assert "linaro" not in err
    code, _, err = invoke("preflight", "-vv", "-i", str(inv))
    assert code == 0 and "paramiko.transport" in err and "the whole command" in err
    assert "linaro" not in err  # the sudo password never shows, not even at -vv
    # after `--` a -v belongs to someone else
    code, _, err = invoke("inventory", "-i", str(inv), "--", "-v")
    assert "run:" not in err
