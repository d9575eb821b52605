"""`sophon-fleet config show`: the defaults in force, and where each one came from."""

from __future__ import annotations

from typing import Any

import click

from provision.cli.errors import reports_errors
from provision.cli.options import json_option
from provision.cli.output import Output
from provision.config import CONFIG_NAME
from provision.fleet import DEFAULT_FORKS
from provision.settings import DEFAULT_MODEL, load_settings


@click.group("config")
def config() -> None:
    """The config file (SOPHON_FLEET_HOME/config.yml): defaults for inventory, model, models, forks, cache,
    mirrors. The environment overrides it; flags override both."""


@config.command("show")
@json_option
@click.pass_obj
@reports_errors
def show(out: Output) -> None:
    """Print every default in force and where it came from (flag > environment > config file > built-in).

    \b
    Examples:
      sophon-fleet config show
      SOPHON_FLEET_CACHE=/tmp/c sophon-fleet config show --json | jq .values.cache
    """
    s = load_settings()  # a bad config file is exit 2 with its file, line and key
    origins = s.origins
    rows: list[tuple[str, Any, str]] = [
        ("inventory", [str(p) for p in s.inventories] or None, origins.get("inventory", "-")),
        ("model", s.model or DEFAULT_MODEL, origins.get("model", "built-in")),
        ("models", [str(p) for p in s.models_path], origins.get("models", "-")),
        ("forks", s.forks or DEFAULT_FORKS, origins.get("forks", "built-in")),
        ("cache", str(s.cache_dir), origins.get("cache", "built-in (XDG_CACHE_HOME)")),
        ("mirrors", list(s.mirrors), origins.get("mirrors", "-")),
        ("home", str(s.home), "SOPHON_FLEET_HOME or XDG_CONFIG_HOME"),
        ("known_hosts", str(s.known_hosts), "home"),
        ("sim_dir", str(s.sim_dir), "SOPHON_FLEET_SIM_DIR or built-in"),
    ]
    config_file = s.home / CONFIG_NAME
    if out.json:
        out.emit_json(
            {
                "config_file": str(config_file),
                "config_file_exists": config_file.is_file(),
                "values": {k: v for k, v, _ in rows},
                "origins": {k: o for k, _, o in rows},
            }
        )
        return
    out.info(f"config file: {config_file}" + ("" if config_file.is_file() else " (none)"))
    out.table(
        "settings in force",
        ["setting", "value", "from"],
        [(k, _text(v), o) for k, v, o in rows],
        keep_whole=("setting", "value"),
    )


def _text(value: Any) -> str:
    if value is None or value == []:
        return "-"
    return ", ".join(value) if isinstance(value, list) else str(value)
