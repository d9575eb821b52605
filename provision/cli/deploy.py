"""`sophon-fleet deploy`: the chat runtime on every box, tested, switched atomically."""

from __future__ import annotations

from typing import Any

import click

from provision.assets.cache import Cache
from provision.assets.pins import load_pins
from provision.cli.errors import Exit, exit_with_worst, reports_errors
from provision.cli.hosts import connector_for, fleet_manifest, host_options, reach_from, resolve_inventory
from provision.cli.interrupt import interruptible
from provision.cli.options import json_option, model_option
from provision.cli.output import Output, fleet_json, styled
from provision.errors import Cancelled, ConnectError
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
    Ctrl-C: each box stops before its next stage (push, install, selftest, switch) and the summary
    says where; Ctrl-C again aborts at once (the runtime in use is switched only after a passed selftest).

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

    stages: dict[str, str] = {}  # each box's stage, for the summary a second Ctrl-C prints

    def progress(host: str, stage: str) -> None:
        stages[host] = stage
        out.info(f"{host}: {stage}")

    def known() -> None:
        rows: list[tuple[str, Any, str, str]] = []
        for name in inv.names():
            stage = stages.get(name)
            if stage is not None and stage.startswith("done: "):
                rows.append((name, stage.removeprefix("done: "), "-", ""))
            else:
                rows.append(
                    (name, styled("aborted", "red"), "-", f"during {stage}" if stage else "not started")
                )
        out.table("deploy (aborted)", ["host", "result", "runtime version", "detail"], rows)

    with connector_for(reach, inv, settings) as connector, interruptible(out, on_abort=known) as cancel:

        def one(host: Any) -> DeployResult:
            deployer = Deployer(connector.transport(host), host.name, progress=progress, cancel=cancel)
            stages[host.name] = "start"
            if rollback:
                result = rollback_box(deployer, break_lock=break_lock)
            else:
                facts = gather(deployer.transport)
                result = deploy_box(
                    deployer, facts, manifest, cache=cache, lock=lock, keep=keep, break_lock=break_lock
                )
            stages[host.name] = f"done: {result.status}"
            return result

        result = run_fleet(inv.hosts, one, forks=reach.forks)
    render(out, result)
    if cancel.is_set():
        raise SystemExit(int(Exit.INTERRUPTED))
    exit_with_worst(o.error for o in result)


def render(out: Output, result: FleetResult[Host, DeployResult]) -> None:
    if out.json:
        out.emit_json(fleet_json(result))
        return
    rows: list[tuple[str, Any, str, str]] = []
    for o in result:
        if o.value is None:
            state = (
                "interrupted"
                if isinstance(o.error, Cancelled)
                else "unreachable"
                if isinstance(o.error, ConnectError)
                else "failed"
            )
            rows.append((o.host.name, styled(state, "red"), "-", str(o.error.message if o.error else "")))
            continue
        test = o.value.selftest or {}
        detail = f"selftest {test.get('tokens')} tokens, {test.get('tps')} tok/s" if test else ""
        if o.value.status == "up-to-date":
            detail = "already in place; nothing ran (`bench` measures it)"
        rows.append((o.host.name, o.value.status, o.value.version, detail))
    out.table("deploy", ["host", "result", "runtime version", "detail"], rows)
    for o in result:
        if o.error is not None and o.error.hint:
            out.info(f"{o.host.name}: hint: {o.error.hint}")
