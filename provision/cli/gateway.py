"""`sophon-fleet gateway config|up|reload|key`: the fleet as one OpenAI-compatible endpoint (HAProxy)."""

from __future__ import annotations

from typing import Any

import click

from provision.cli.errors import reports_errors
from provision.cli.hosts import host_options, reach_from, resolve_inventory
from provision.cli.options import json_option
from provision.cli.output import Output
from provision.runtime import gateway as core
from provision.settings import load_settings

listen_option = click.option(
    "--listen",
    metavar="ADDR:PORT",
    default=None,
    help=f"Where clients connect (default: the previous one, else {core.DEFAULT_LISTEN}).",
)


@click.group("gateway")
def gateway() -> None:
    """One endpoint for the whole fleet: HAProxy in front of every box's sophon-chat.service.

    Requests queue at the gateway and go to the first free box (one generation per box). Clients pass
    the gateway's key (`gateway key`) as their API key; each box's own key is added toward that box.

    \b
    Examples:
      sophon-fleet gateway up -i /run/sophon-fleet-sim/inventory.yml
      sophon-fleet gateway up -i hosts.yml --listen 0.0.0.0:8080
      sophon-fleet gateway reload -i hosts.yml        # after the inventory changed; streams go on
      sophon-fleet gateway key
    """


def _write(out: Output, listen: str | None, kwargs: dict[str, Any]) -> core.GatewayConfig:
    settings = load_settings()
    inv = resolve_inventory(reach_from(kwargs), settings)
    config = core.write_config(core.gateway_paths(settings.home), inv.hosts, settings.home, listen)
    if config.skipped:
        out.warn(f"no API key yet (run `serve up` first), left out: {', '.join(config.skipped)}")
    return config


def _report(out: Output, config: core.GatewayConfig, what: str) -> None:
    if out.json:
        out.emit_json(config.as_dict())
    else:
        boxes = ", ".join(b.name for b in config.backends)
        out.info(f"{what}: http://{config.listen}/v1 → {boxes} ({config.path})")  # info() makes it safe


@gateway.command("config")
@host_options
@listen_option
@json_option
@click.pass_obj
@reports_errors
def config(out: Output, listen: str | None, **kwargs: Any) -> None:
    """Write haproxy.cfg from the inventory (checked with `haproxy -c`), without starting anything.

    \b
    Examples:
      sophon-fleet gateway config -i hosts.yml --listen 127.0.0.1:8080 --json
    """
    _report(out, _write(out, listen, kwargs), "gateway config")


@gateway.command("up")
@host_options
@listen_option
@json_option
@click.pass_obj
@reports_errors
def up(out: Output, listen: str | None, **kwargs: Any) -> None:
    """Write the config, then run HAProxy in the foreground (Ctrl-C stops it).

    \b
    Examples:
      sophon-fleet gateway up -i /run/sophon-fleet-sim/inventory.yml
      sophon-fleet gateway up -i hosts.yml --listen 0.0.0.0:8080
    """
    config = _write(out, listen, kwargs)
    _report(out, config, "gateway up")
    raise SystemExit(core.run_gateway(core.gateway_paths(load_settings().home)))


@gateway.command("reload")
@host_options
@json_option
@click.pass_obj
@reports_errors
def reload(out: Output, **kwargs: Any) -> None:
    """Rewrite the config from the inventory and reload the running gateway; running streams go on.

    \b
    Examples:
      sophon-fleet gateway reload -i hosts.yml --limit 'se7-*'
    """
    config = _write(out, None, kwargs)
    core.reload_gateway(core.gateway_paths(load_settings().home))
    _report(out, config, "gateway reloaded")


@gateway.command("key")
@json_option
@click.pass_obj
@reports_errors
def key(out: Output) -> None:
    """Print the gateway's client key (made on first use): what clients pass as `api_key`.

    \b
    Examples:
      sophon-fleet gateway key
      OPENAI_API_KEY=$(sophon-fleet gateway key) OPENAI_BASE_URL=http://127.0.0.1:8080/v1 python app.py
    """
    value = core.ensure_client_key(core.gateway_paths(load_settings().home))
    if out.json:
        out.emit_json({"key": value})
    else:
        click.echo(value)
