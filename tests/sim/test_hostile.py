"""Issue 13: hostile manifests, kits, inventories and boxes against the simulated fleet.

Each test reproduces one finding of the adversarial run and asserts what must hold instead: refused with
exit 2 (or the documented code) before anything touches a box, bounded in time and memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from provision.cli.main import cli
from sim.mirror import build_asset_tree
from tests.sim.conftest import needs_root

pytestmark = [pytest.mark.sim, needs_root]


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def box_data(fleet, name: str) -> Path:
    """The box's /data as the host sees it."""
    return fleet.state.box_paths(name).dir / "fs" / "data"


@pytest.fixture
def pulled(tmp_path):
    """A pinned glm4-9b stand-in manifest with its int4 files in the (test's) cache."""
    tree = build_asset_tree(tmp_path / "mirror", bmodel_size=1 << 20)
    manifest = tmp_path / "good" / "glm4-9b.yaml"
    manifest.parent.mkdir()
    manifest.write_text(tree.manifest_yaml(pin=True))
    code, output = invoke(
        "assets",
        "pull",
        "-m",
        str(manifest),
        "--variant",
        "int4",
        "--mirror",
        f"file://{tree.root}",
        "--no-dfss",
    )
    assert code == 0, output
    return manifest


def test_manifest_unpack_escaping_its_directory_is_refused_before_any_box_is_touched(
    sim_fleet, pulled, tmp_path
):
    fleet = sim_fleet(["se7-factory"])
    backups = box_data(fleet, "se7-1") / "sophon-fleet" / "backups"
    backups.mkdir(parents=True)
    (backups / "emmcboot.itb.19700101T000000Z.json").write_text(json.dumps({"layout": [3950, 2048, 3072]}))
    hostile = tmp_path / "hostile" / "glm4-9b.yaml"
    hostile.parent.mkdir()
    text = pulled.read_text()
    assert "    unpack: token_config\n" in text
    hostile.write_text(text.replace("    unpack: token_config\n", "    unpack: ./../../../backups\n"))

    code, output = invoke(
        "assets", "push", "-i", str(fleet.inventory_path), "-m", str(hostile), "--variant", "int4"
    )

    assert code == 2, output
    assert f"{hostile}:" in output and "files.token-config.unpack" in output
    assert "'./../../../backups' must be a directory name beside the archive" in output
    assert sorted(p.name for p in backups.iterdir()) == ["emmcboot.itb.19700101T000000Z.json"]
    assert not (box_data(fleet, "se7-1") / "sophon-fleet" / "models").exists()  # nothing reached the box
