"""memory plan / apply / rollback through the CLI against simulated fleets."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from provision.cli.main import cli
from sim import itb, memedit_kit
from tests.sim.conftest import connect, needs_root, run

pytestmark = [pytest.mark.sim, needs_root]

FAST = ("--connect-timeout", "2", "--reboot-timeout", "15")


@pytest.fixture
def kit(tmp_path):
    return str(memedit_kit.build_kit(tmp_path / "kit").tarball)


def invoke(*args):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def apply_json(fleet, kit, *args):
    code, output = invoke(
        "memory", "apply", "--json", "-i", str(fleet.inventory_path), "--kit", kit, "--yes", *FAST, *args
    )
    return code, json.loads(output) if output.startswith("{") else output


def boot_image(fleet, name):
    return itb.decode(fleet.state.box_paths(name).boot_image.read_bytes())


def test_factory_box_is_applied_rebooted_and_verified(sim_fleet, kit):
    fleet = sim_fleet(["se7-factory"])
    before = fleet.hardware("se7-1")
    code, doc = apply_json(fleet, kit)
    assert code == 0, doc
    (host,) = doc["hosts"]
    assert host["result"] == "applied"
    assert host["before"] == {"npu": 3950, "vpu": 2048, "vpp": 3072}
    assert host["after"] == {"npu": 7615, "vpu": 3071, "vpp": 3071}
    after = fleet.hardware("se7-1")
    assert after.heaps == [7615, 3071, 3071]
    assert after.boot_id != before.boot_id and after.boot_count == before.boot_count + 1
    backup = host["backup"]
    client = connect(fleet, "se7-1")
    assert run(client, f"sha256sum {backup['path']}")[1].split()[0] == backup["sha256"]
    assert run(client, f"cat {backup['path']}.sha256")[1].split()[0] == backup["sha256"]
    assert run(client, "ls -a /boot")[1].split() == [
        ".",
        "..",
        "emmcboot.itb",
        "emmcboot.itb.memeditBak",
        "multi.its",
    ]
