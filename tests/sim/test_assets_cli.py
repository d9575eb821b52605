"""`sophon-fleet assets pull/push` end to end on a simulated fleet with its mirror node (HTTP + SFTP)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from provision.assets.pins import default_pins_path
from provision.cli.main import cli
from provision.manifest import load_manifest
from tests.sim.conftest import connect, needs_root, run

pytestmark = [pytest.mark.sim, needs_root]

ROOT = "/data/sophon-fleet/models/glm4-9b-sim"


@pytest.fixture
def fleet(tmp_path_factory):
    from sim.fleet import Fleet

    fleet = Fleet.up(
        tmp_path_factory.mktemp("fleet"), ["se7-ready-int8", "se7-int4-only", "se7-small"], mirror=True
    )
    yield fleet
    assert fleet.down() == []


def invoke(tmp_path, *args):
    env = {"SOPHON_FLEET_CACHE": str(tmp_path / "cache"), "SOPHON_FLEET_HOME": str(tmp_path / "home")}
    return CliRunner().invoke(cli, list(args), env=env)


def test_pull_over_sftp_then_push_auto_skip_and_from_mirror(fleet, tmp_path):
    m = ["-m", str(fleet.manifest_path)]
    inv = ["-i", str(fleet.inventory_path)]
    manifest = load_manifest(fleet.manifest_path)
    default_pins_path(manifest, tmp_path / "home").unlink(missing_ok=True)

    # the mirror node's SFTP (user open, password open) as the dfss server: no HTTP mirror given
    sftp_only = fleet.manifest_path.with_name("sftp-only.yaml")
    sftp_only.write_text(
        fleet.manifest_path.read_text().replace(f'mirrors: ["{fleet.mirror_url}"]', "mirrors: []")
    )
    pulled = invoke(tmp_path, "assets", "pull", "-m", str(sftp_only), "--variant", "int4", "--json")
    assert pulled.exit_code == 0, pulled.output
    assert {f["source"].split(":")[0] for f in json.loads(pulled.stdout)["files"]} == {"sftp"}

    pulled = invoke(tmp_path, "assets", "pull", *m, "--variant", "all", "--no-dfss", "--json")
    assert pulled.exit_code == 0, pulled.output

    planned = invoke(tmp_path, "assets", "push", *inv, *m, "--limit", "se7-1", "--dry-run", "--json")
    assert planned.exit_code == 0, planned.output
    (box,) = json.loads(planned.stdout)["boxes"]
    assert box["result"] == "planned" and {d["status"] for d in box["detail"]} == {"would-send"}

    pushed = invoke(tmp_path, "assets", "push", *inv, *m, "--limit", "se7-1,se7-2", "--json")
    assert pushed.exit_code == 0, pushed.output
    boxes = {b["host"]: b for b in json.loads(pushed.stdout)["boxes"]}
    assert boxes["se7-1"]["variant"] == "int8" and boxes["se7-1"]["result"] == "pushed"  # ready-int8
    assert boxes["se7-2"]["variant"] == "int4" and boxes["se7-2"]["result"] == "pushed"  # int4 only

    again = invoke(tmp_path, "assets", "push", *inv, *m, "--limit", "se7-1,se7-2", "--json")
    assert again.exit_code == 0, again.output
    assert {b["result"] for b in json.loads(again.stdout)["boxes"]} == {"skipped"}

    fleet.fault("se7-3", "wrong-chip")  # preflight blocks it: auto pushes nothing there
    blocked = invoke(tmp_path, "assets", "push", *inv, *m, "--limit", "se7-3", "--json")
    assert blocked.exit_code == 3, blocked.output
    (box,) = json.loads(blocked.stdout)["boxes"]
    assert box["result"] == "failed" and "blocked" in box["error"]

    fetched = invoke(
        tmp_path,
        "assets",
        "push",
        *inv,
        *m,
        "--limit",
        "se7-3",
        "--variant",
        "int4",
        "--from-mirror",
        fleet.mirror_url,
        "--json",
    )
    assert fetched.exit_code == 0, fetched.output
    (box,) = json.loads(fetched.stdout)["boxes"]
    assert box["result"] == "pushed" and {d["status"] for d in box["detail"]} == {"fetched"}
    assert box["transferred"] > 0

    client = connect(fleet, "se7-2")
    status, out = run(client, f"cd {ROOT}/int4 && ls && cat glm4-9b_int4_1dev.bmodel.verified")
    client.close()
    assert status == 0 and "token_config\n" in out
    assert manifest.variant("int4").bmodel.pinned.sha256 in out
