"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from provision.cli.output import Output


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
