"""Steps shared by integration tests: point the CLI at a simulated fleet, pull and push its stand-ins."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from provision.cli.main import cli
from sim.mirror import build_asset_tree


def use_fleet(fleet, tmp_path, monkeypatch) -> None:
    """Environment of a user of this fleet: its manifest, a private cache, home and no ~/.ssh/config."""
    monkeypatch.setenv("SOPHON_FLEET_MODELS", str(fleet.manifest_path.parent))
    monkeypatch.setenv("SOPHON_FLEET_MODEL", fleet.manifest_path.stem)
    monkeypatch.setenv("SOPHON_FLEET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SOPHON_FLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SOPHON_FLEET_SSH_CONFIG", str(tmp_path / "no-ssh-config"))


def invoke(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def pull_and_push(fleet, variant: str, names: list[str] | None = None) -> None:
    """`assets pull` then `assets push` through the CLI (to all boxes, or to `names`)."""
    code, out, err = invoke("assets", "pull", "--variant", variant, "--no-dfss")
    assert code == 0, out + err
    limit = ["--limit", ",".join(names)] if names else []
    code, out, err = invoke("assets", "push", "-i", str(fleet.inventory_path), "--variant", variant, *limit)
    assert code == 0, out + err


def pull_pinned_standins(directory: Path, bmodel_size: int) -> Path:
    """A pinned glm4-9b-sim manifest of fresh stand-ins under `directory`, its int4 files pulled into the
    test's cache through the CLI (from the tree itself: no mirror node needed). Returns the manifest."""
    tree = build_asset_tree(directory / "mirror", bmodel_size=bmodel_size)
    manifest = directory / "good" / "glm4-9b-sim.yaml"
    manifest.parent.mkdir()
    manifest.write_text(tree.manifest_yaml(pin=True))
    code, out, err = invoke(
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
    assert code == 0, out + err
    return manifest
