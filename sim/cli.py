"""`sophon-fleet sim ...`: the simulated fleet."""

from __future__ import annotations

import click


@click.group()
def sim() -> None:
    """Simulated BM1684X boxes (root; Linux namespaces) to build and prove everything on."""
