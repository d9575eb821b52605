"""Steps shared by integration tests: point the CLI at a simulated fleet, pull and push its stand-ins."""

from __future__ import annotations

from click.testing import CliRunner

from provision.assets.cache import Cache
from provision.assets.lock import load_lock
from provision.assets.push import BoxTarget, ExecChannel, push_fleet
from provision.cli.main import cli
from provision.inventory import load_inventory
from provision.manifest import load_manifest
from provision.settings import load_settings
from provision.transport import Connector, Trust


def use_fleet(fleet, tmp_path, monkeypatch) -> None:
    """Environment of a user of this fleet: its manifest, a private cache, home and no ~/.ssh/config."""
    monkeypatch.setenv("SOPHON_FLEET_MODELS", str(fleet.manifest_path.parent))
    monkeypatch.setenv("SOPHON_FLEET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SOPHON_FLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SOPHON_FLEET_SSH_CONFIG", str(tmp_path / "no-ssh-config"))


def invoke(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def pull_and_push(fleet, variant: str, names: list[str] | None = None) -> None:
    """`assets pull` through the CLI, then push the variant to the boxes (all, or `names`)."""
    code, out, err = invoke("assets", "pull", "--variant", variant, "--no-dfss")
    assert code == 0, out + err
    settings = load_settings()
    manifest = load_manifest("glm4-9b")
    inventory = load_inventory([str(fleet.inventory_path)], (), ssh_config=settings.ssh_config)
    hosts = [h for h in inventory.hosts if names is None or h.name in names]
    with Connector(Trust(settings.known_hosts, settings.user_known_hosts)) as connector:
        targets = [
            BoxTarget(h.name, lambda cmd, h=h: ExecChannel(connector.transport(h).open_exec(cmd)), variant)
            for h in hosts
        ]
        results = push_fleet(manifest, targets, cache=Cache(settings.cache_dir), lock=load_lock(manifest))
    assert all(not isinstance(r, Exception) for r in results.values()), results
