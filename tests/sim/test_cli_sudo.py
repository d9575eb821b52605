"""A wrong sudo password is told from a missing one, everywhere, before anything changes."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from provision.cli.main import cli
from sim import kit_archive
from tests.sim.conftest import needs_root

pytestmark = [pytest.mark.sim, needs_root]


def invoke(*args, input=None):
    result = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def inventory_with(fleet, tmp_path, **defaults):
    """The fleet's inventory without its password file, with `defaults` instead."""
    data = yaml.safe_load(fleet.inventory_path.read_text())
    del data["defaults"]["become_password_file"]
    data["defaults"].update(defaults)
    path = tmp_path / f"inv-{len(defaults)}-{'-'.join(defaults)}.yml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def reasons(doc):
    return [(r["code"], r["message"]) for r in doc["hosts"][0]["reasons"]]


def test_wrong_password_and_no_password_are_told_apart_everywhere(sim_fleet, tmp_path, monkeypatch):
    fleet = sim_fleet(["airbox"])  # memory_edit preinstalled, root-owned
    kit = str(kit_archive.build_kit(tmp_path / "kit").tarball)
    right = str(fleet.inventory_path)
    # a first probe with the right password: the box keeps its heaps for this boot
    assert invoke("preflight", "-i", right, "--json")[0] == 0
    monkeypatch.setenv("SE7_SUDO", "Xq7-not-it")
    wrong = inventory_with(fleet, tmp_path, become_password_env="SE7_SUDO")
    none = inventory_with(fleet, tmp_path)

    # preflight, with the heaps replayed (no --fresh) and asked again (--fresh): the password is checked
    for fresh in ((), ("--fresh",)):
        code, out, _ = invoke("preflight", "-i", wrong, "--json", *fresh)
        doc = json.loads(out)
        assert code == 3 and doc["hosts"][0]["status"] == "blocked", out
        (reason,) = reasons(doc)
        assert reason[0] == "sudo-wrong-password" and "sudo refused this password" in reason[1]
        assert "none was given" not in out and doc["hosts"][0]["facts"]["sudo"] == "wrong-password"
        assert "Xq7-not-it" not in out  # the password itself never shows

    # no password at all: said as such
    code, out, _ = invoke("preflight", "-i", none, "--json", "--fresh")
    assert code == 3 and reasons(json.loads(out))[0][0] == "sudo-no-password"
    assert "sudo needs a password and none was given" in out

    # -K with a mistyped password is a wrong password, not a missing one
    code, out, _ = invoke("preflight", "-i", none, "--json", "--fresh", "-K", input="linar0\n")
    assert code == 3 and reasons(json.loads(out))[0][0] == "sudo-wrong-password"

    # memory apply: refused before anything changes, with the true reason; /boot and the heaps untouched
    image = fleet.state.box_paths("se7-1").boot_image.read_bytes()
    code, out, err = invoke("memory", "apply", "-i", wrong, "--kit", kit, "--yes", "--connect-timeout", "2")
    assert code != 0
    assert "sudo refused this password" in out + err and "printed no max sizes" not in out + err
    assert fleet.state.box_paths("se7-1").boot_image.read_bytes() == image
    assert fleet.hardware("se7-1").heaps == [3950, 2048, 3072]

    # doctor: the kit is there; max is unknown because sudo refused, and it says so
    code, out, err = invoke("doctor", "se7-1", "-i", wrong)
    assert "no memory_edit kit on the box" not in out
    assert "sudo refused" in out and "sudo refused this password" in out

    # rollback (a reboot): refused before the box goes down
    boot_id = fleet.hardware("se7-1").boot_id
    code, out, err = invoke("memory", "rollback", "se7-1", "-i", wrong, "--yes", "--connect-timeout", "2")
    assert code != 0 and "sudo refused this password" in out + err
    assert fleet.hardware("se7-1").boot_id == boot_id
