"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from provision.cli.output import Output
from provision.settings import DEFAULT_MODEL, load_settings


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--json`: print one JSON document on stdout instead of tables."""

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
        help="Machine-readable output (one JSON document on stdout).",
    )(func)


def model_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """`-m/--model`: the model manifest, by name (SOPHON_FLEET_MODELS first, then the shipped models/) or
    by path; default SOPHON_FLEET_MODEL, else glm4-9b."""
    return click.option(
        "-m",
        "--model",
        default=lambda: load_settings().model,
        show_default=f"SOPHON_FLEET_MODEL, else {DEFAULT_MODEL}",
        help="Model manifest: a name (models/<name>.yaml, SOPHON_FLEET_MODELS first) or a path.",
    )(func)
