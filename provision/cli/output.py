"""Rendering: rich tables and progress for people, one JSON document for machines."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # rich is imported on first output, not for --help or --json
    from rich.console import Console


@dataclass
class Output:
    """What a command prints, and how (`--json`, `-v`, `-q`)."""

    json: bool = False
    verbosity: int = 0

    @functools.cached_property
    def console(self) -> Console:
        from rich.console import Console

        return Console(highlight=False, soft_wrap=True)

    @functools.cached_property
    def err(self) -> Console:
        from rich.console import Console

        return Console(stderr=True, highlight=False, soft_wrap=True)

    def emit_json(self, document: Any) -> None:
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")

    def info(self, text: str) -> None:
        """A progress or status line for people (stderr; silent with -q or --json)."""
        if self.verbosity >= 0 and not self.json:
            self.err.print(text)

    def warn(self, text: str) -> None:
        """A warning for people (stderr, even with --json; silent with -q)."""
        if self.verbosity >= 0:
            from rich.text import Text

            self.err.print(Text(f"warning: {text}", style="yellow"))

    def debug(self, text: str) -> None:
        if self.verbosity > 0:
            self.err.print(f"[dim]{text}[/dim]")

    def table(
        self,
        title: str | None,
        columns: Sequence[str],
        rows: Iterable[Sequence[Any]],
        *,
        keep_whole: Sequence[str] = (),
    ) -> None:
        """A table; columns named in `keep_whole` are never wrapped or cut (e.g. 7615/3071/3071)."""
        from rich.table import Table
        from rich.text import Text

        cells = [[str(cell) for cell in row] for row in rows]
        table = Table(title=title, show_lines=False, header_style="bold")
        for i, column in enumerate(columns):
            if column in keep_whole:
                width = max([len(column), *(len(Text.from_markup(r[i]).plain) for r in cells)])
                table.add_column(column, no_wrap=True, min_width=width)
            else:
                table.add_column(column)
        for row in cells:
            table.add_row(*row)
        self.console.print(table)

    def text(self, text: str) -> None:
        self.console.print(text, markup=False)


def fleet_json(result: Any) -> dict[str, Any]:
    """One JSON document for a FleetResult whose values have `as_dict()`: per host, ok, value or error."""
    return {
        "hosts": [
            {
                "host": o.host.name,
                "ok": o.ok,
                **(o.value.as_dict() if o.value is not None else {}),
                **({"error": o.error.message, "hint": o.error.hint} if o.error else {}),
            }
            for o in result
        ]
    }
