"""Rendering: rich tables and progress for people, one JSON document for machines."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclass
class Output:
    """What a command prints, and how (`--json`, `-v`, `-q`)."""

    json: bool = False
    verbosity: int = 0
    console: Console = field(default_factory=lambda: Console(highlight=False, soft_wrap=True))
    err: Console = field(default_factory=lambda: Console(stderr=True, highlight=False, soft_wrap=True))

    def emit_json(self, document: Any) -> None:
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")

    def info(self, text: str) -> None:
        """A progress or status line for people (stderr; silent with -q or --json)."""
        if self.verbosity >= 0 and not self.json:
            self.err.print(text)

    def debug(self, text: str) -> None:
        if self.verbosity > 0:
            self.err.print(f"[dim]{text}[/dim]")

    def table(self, title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        table = Table(title=title, show_lines=False, header_style="bold")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(str(cell) for cell in row))
        self.console.print(table)

    def text(self, text: str) -> None:
        self.console.print(text, markup=False)
