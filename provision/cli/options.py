"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from provision import manifest
from provision.cli.output import Output
from provision.settings import DEFAULT_MODEL


def json_option(
    func: Callable[..., Any] | None = None,
    *,
    help: str = "Machine-readable output: one JSON document on stdout, with a versioned `schema`.",
) -> Any:
    """`--json`: print one JSON document on stdout instead of tables (`@json_option(help=...)` for a
    command that streams JSON lines)."""
    if func is None:
        return lambda f: json_option(f, help=help)

    def set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        if value:
            ctx.ensure_object(Output).json = True
        return value

    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        expose_value=False,
        callback=set_json,
        is_eager=True,
        help=help,
    )(func)


def model_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """`-m/--model`: the model manifest, by name (SOPHON_FLEET_MODELS first, then the inventory's
    `models:`, then the shipped models/) or by path; None when not given (see `model_name`)."""
    return click.option(
        "-m",
        "--model",
        default=None,
        show_default=f"SOPHON_FLEET_MODEL, else the inventory's model:, else {DEFAULT_MODEL}",
        help="Model manifest: a name (models/<name>.yaml, SOPHON_FLEET_MODELS first) or a path.",
    )(func)


def model_name(model: str | None, inventory_model: str | None = None) -> str:
    """See `provision.manifest.model_name`: -m, SOPHON_FLEET_MODEL, the inventory's, the config file's."""
    return manifest.model_name(model, inventory_model)
