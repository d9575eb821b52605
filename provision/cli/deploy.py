"""`sophon-fleet deploy`: the chat runtime on every box, tested, switched atomically."""

from __future__ import annotations

from typing import Any

import click

from provision.assets.cache import Cache
from provision.assets.pins import load_pins
from provision.cli.errors import exit_with_worst, reports_errors
from provision.cli.hosts import connector_for, fleet_manifest, host_options, reach_from, resolve_inventory
from provision.cli.options import json_option, model_option
from provision.cli.output import Output, fleet_json, styled
from provision.facts.parse import gather
from provision.fleet import FleetResult, run_fleet
from provision.inventory.hosts import Host
from provision.runtime.deploy import Deployer, DeployResult, deploy_box, rollback_box
from provision.settings import load_settings


@click.command("deploy")
@host_options
@model_option
@click.option(
    "--keep",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Runtime versions kept on each box (for --rollback).",
)
@click.option("--rollback", is_flag=True, help="Switch each box back to the runtime deployed before.")
@click.option(
    "--break-lock", is_flag=True, help="Remove a runtime lock left on the boxes by a killed deploy first."
)
@json_option
@click.pass_obj
@reports_errors
def deploy(out: Output, model: str, keep: int, rollback: bool, break_lock: bool, **kwargs: Any) -> None:
    """Install the chat runtime on each box and prove it with a selftest.

    Each box gets /data/sophon-fleet/runtime/<version>/ (the runtime's code and the wheels for its
    platform from an offline wheelhouse, plus the SAIL wheel when `import sophon.sail` fails), a venv,
    then `python -m chat selftest` against its verified model; only then `current` is switched
    (atomically). A box already at this version is skipped. Needs `assets push` first. Each box is
    locked while it is deployed (/data/sophon-fleet/locks/runtime.lock): a second deploy is refused.

    \b
    Examples:
      sophon-fleet deploy -i /run/sophon-fleet-sim/inventory.yml
      sophon-fleet deploy -i hosts.yml --limit se7-02 --json
      sophon-fleet deploy -i hosts.yml --rollback
    """
    reach = reach_from(kwargs)
    settings = load_settings()
    inv = resolve_inventory(reach, settings)
    manifest = fleet_manifest(model, inv)
    cache, lock = Cache(settings.cache_dir), load_pins(manifest)

    def progress(host: str, stage: str) -> None:
        out.info(f"{host}: {stage}")

    with connector_for(reach, inv, settings) as connector:

        def one(host: Any) -> DeployResult:
            deployer = Deployer(connector.transport(host), host.name, progress=progress)
            if rollback:
                return rollback_box(deployer, break_lock=break_lock)
            facts = gather(deployer.transport)
            return deploy_box(
                deployer, facts, manifest, cache=cache, lock=lock, keep=keep, break_lock=break_lock
            )

        result = run_fleet(inv.hosts, one, forks=reach.forks)
    render(out, result)
    exit_with_worst(o.error for o in result)


def render(out: Output, result: FleetResult[Host, DeployResult]) -> None:
    if out.json:
        out.emit_json(fleet_json(result))
        return
    rows: list[tuple[str, Any, str, str]] = []
    for o in result:
        if o.value is None:
            rows.append((o.host.name, styled("failed", "red"), "-", str(o.error.message if o.error else "")))
            continue
        test = o.value.selftest or {}
        detail = f"selftest {test.get('tokens')} tokens, {test.get('tps')} tok/s" if test else ""
        if o.value.status == "up-to-date":
            detail = "already in place; nothing ran (`bench` measures it)"
        rows.append((o.host.name, o.value.status, o.value.version, detail))
    out.table("deploy", ["host", "result", "runtime version", "detail"], rows)
