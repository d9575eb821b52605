"""`sophon-fleet serve up|down|status|key`: the OpenAI-compatible API on each box (sophon-chat.service)."""

from __future__ import annotations

from typing import Any

import click

from provision.cli.errors import exit_with_worst, reports_errors
from provision.cli.hosts import connector_for, fleet_manifest, host_options, reach_from, resolve_inventory
from provision.cli.options import json_option, model_option
from provision.cli.output import Output, fleet_json, styled
from provision.facts.parse import gather
from provision.fleet import FleetResult, run_fleet
from provision.runtime import serve as core
from provision.runtime.remote_chat import choose_variant
from provision.settings import load_settings


@click.group("serve")
def serve() -> None:
    """The box's OpenAI-compatible chat API (`sophon-chat.service`, port 8000).

    \b
    Examples:
      sophon-fleet serve up -i /run/sophon-fleet-sim/inventory.yml
      sophon-fleet serve status -i hosts.yml --json
      sophon-fleet serve key -i hosts.yml -l se7-1
      sophon-fleet serve down -i hosts.yml -l se7-2
    """


def _fleet(kwargs: dict[str, Any], one: Any, *, with_manifest: bool = False) -> FleetResult:
    """Run `one(transport, host, settings)` on every box — `one(..., manifest)` `with_manifest` (the
    command's -m, else SOPHON_FLEET_MODEL, else the inventory's `model:`)."""
    model = kwargs.pop("model", None)
    reach = reach_from(kwargs)
    settings = load_settings()
    inv = resolve_inventory(reach, settings)
    extra = (fleet_manifest(model, inv),) if with_manifest else ()
    with connector_for(reach, inv, settings) as connector:
        return run_fleet(
            inv.hosts, lambda host: one(connector.transport(host), host, settings, *extra), forks=reach.forks
        )


@serve.command("up")
@host_options
@model_option
@click.option(
    "--variant",
    metavar="auto|VARIANT",
    default="auto",
    show_default=True,
    help="Which deployed variant to serve (auto: int8 when verified on the box, else int4).",
)
@json_option
@click.pass_obj
@reports_errors
def up(out: Output, model: str | None, variant: str, **kwargs: Any) -> None:
    """Install, enable and start sophon-chat.service on each box; wait until /health is ready.

    The unit runs the deployed runtime as the box user (Restart=on-failure, enabled at boot). The API key
    is made here on first use and stored on the box readable by the box user only. A box already serving
    as planned is left alone ("ok"). Needs `deploy` first.

    \b
    Examples:
      sophon-fleet serve up -i /run/sophon-fleet-sim/inventory.yml
      sophon-fleet serve up -i hosts.yml --limit se7-02 --variant int4 --json
    """

    def one(transport: Any, host: Any, settings: Any, manifest: Any) -> core.ServeStatus:
        chosen = choose_variant(gather(transport), manifest, host.variant or variant, host.name)
        key = core.ensure_key(core.key_path(settings.home, host.name))
        unit = core.render_unit(manifest, chosen, host.user)
        return core.serve_up(transport, host.name, unit, key)

    _render(out, _fleet({**kwargs, "model": model}, one, with_manifest=True), "serve up")


@serve.command("down")
@host_options
@json_option
@click.pass_obj
@reports_errors
def down(out: Output, **kwargs: Any) -> None:
    """Stop and disable sophon-chat.service on each box (the unit and key stay for the next `up`).

    \b
    Examples:
      sophon-fleet serve down -i hosts.yml --limit se7-02
    """
    _render(
        out, _fleet(kwargs, lambda transport, host, _s: core.serve_down(transport, host.name)), "serve down"
    )


@serve.command("status")
@host_options
@json_option
@click.pass_obj
@reports_errors
def status(out: Output, **kwargs: Any) -> None:
    """Each box's service as systemctl sees it, and its /health (ready, model, busy, queue).

    \b
    Examples:
      sophon-fleet serve status -i /run/sophon-fleet-sim/inventory.yml --json
    """
    _render(out, _fleet(kwargs, lambda transport, host, _s: core.serve_status(transport, host.name)), "serve")


@serve.command("key")
@host_options
@json_option
@click.pass_obj
@reports_errors
def key(out: Output, **kwargs: Any) -> None:
    """Print each box's API key (what a client passes as `api_key` when it calls the box directly).

    \b
    Examples:
      sophon-fleet serve key -i hosts.yml --limit se7-1
    """
    reach = reach_from(kwargs)
    settings = load_settings()
    inv = resolve_inventory(reach, settings)
    keys = {h.name: core.read_key(core.key_path(settings.home, h.name), h.name) for h in inv.hosts}
    if out.json:
        out.emit_json({"keys": keys})
        return
    for name, value in keys.items():
        click.echo(f"{name}\t{value}" if len(keys) > 1 else value)


def _render(out: Output, result: FleetResult, title: str) -> None:
    if out.json:
        out.emit_json(fleet_json(result))
    else:
        rows: list[tuple[object, ...]] = []
        for o in result:
            if o.value is None:
                rows.append(
                    (o.host.name, styled("failed", "red"), "-", "-", o.error.message if o.error else "")
                )
                continue
            s, health = o.value, o.value.health
            state = f"{s.unit.active}/{s.unit.sub} ({s.unit.enabled}, {s.unit.restarts} restarts)"
            ready = styled("ready", "green") if s.ready else styled("not ready", "yellow")
            detail = (
                f"{health.get('model')} {health.get('variant')}, busy {health.get('busy')}, "
                f"queue {health.get('queue_depth')}"
                if s.ready
                else str(health.get("error", ""))
            )
            changes = ", ".join(s.changes) if s.changes else "ok"
            rows.append((o.host.name, state, ready, changes, detail))  # values are made safe by the table
        out.table(title, ["host", "service", "health", "changes", "detail"], rows)
    exit_with_worst(o.error for o in result)
