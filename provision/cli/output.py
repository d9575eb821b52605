"""Rendering: rich tables and progress for people, plain rows for pipes, one JSON document for machines.

Rules every command follows through this module:
- results go to stdout (`table`, `text`, `emit_json`), diagnostics to stderr (`info`, `warn`, `debug`);
- every value from a box or a file is made safe for the terminal first (`safe`: control characters such as
  ESC become visible `\\x1b` escapes) and rendered as rich `Text`, never parsed as markup; styles come only
  from the command itself (`styled`);
- a value a user may copy (an address, a path, a key, a version, a layout: a cell of at most four
  words) is never cut or wrapped; sentences wrap; a table that cannot fit the terminal, and any table
  when stdout is not a terminal, is printed as plain aligned rows instead.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

# C0 controls but tab and newline, DEL, C1 controls; and the Unicode line/paragraph separators and bidi
# overrides, which reorder or split what the terminal shows
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNSAFE_IN_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(value: Any, *, multiline: bool = True) -> str:
    """`value` as text with every terminal control character made visible (ESC -> `\\x1b`). Tabs and
    newlines stay unless `multiline=False` (table cells, one-line values)."""
    text = value if isinstance(value, str) else str(value)
    return (_UNSAFE if multiline else _UNSAFE_IN_LINE).sub(_escape, text)


def styled(value: Any, style: str = "") -> Text:
    """A safe one-line value with a style the command chose (never markup from the value)."""
    return Text(safe(value, multiline=False), style=style)


def plural(count: int, noun: str, many: str | None = None) -> str:
    """`1 box`, `2 boxes`, `1 step`, `3 steps`."""
    if count == 1:
        return f"1 {noun}"
    return f"{count} {many or (noun + 'es' if noun.endswith(('x', 's')) else noun + 's')}"


def _cell(value: Any) -> Text:
    return value if isinstance(value, Text) else styled(value)


@dataclass
class Output:
    """What a command prints, and how (`--json`, `-v`, `-q`)."""

    json: bool = False
    verbosity: int = 0
    console: Console = field(default_factory=lambda: Console(highlight=False, soft_wrap=True))
    err: Console = field(default_factory=lambda: Console(stderr=True, highlight=False, soft_wrap=True))

    def emit_json(self, document: dict[str, Any]) -> None:
        """The command's one JSON document on stdout, with its versioned `schema`
        (`sophon-fleet/<command>/v1` unless the document names its own)."""
        document = {"schema": schema_of_command(), **document}
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")

    def json_line(self, event: dict[str, Any]) -> None:
        """One JSON object on one line (streams: `chat --json`), with `schema`; non-ASCII text stays
        readable, C1 controls and line separators are \\u-escaped."""
        line = json.dumps({"schema": schema_of_command(), **event}, ensure_ascii=False, default=str)
        sys.stdout.write(_UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", line) + "\n")
        sys.stdout.flush()

    def info(self, text: str) -> None:
        """A progress or status line for people (stderr; silent with -q or --json)."""
        if self.verbosity >= 0 and not self.json:
            self.err.print(Text(safe(text)))

    def warn(self, text: str) -> None:
        """A warning for people (stderr, even with --json; silent with -q)."""
        if self.verbosity >= 0:
            self.err.print(Text(f"warning: {safe(text)}", style="yellow"))

    def debug(self, text: str, level: int = 1) -> None:
        """Detail for -v (level 1) or -vv (level 2), on stderr."""
        if self.verbosity >= level:
            self.err.print(Text(safe(text), style="dim"))

    def table(
        self,
        title: str | None,
        columns: Sequence[str],
        rows: Iterable[Sequence[Any]],
        *,
        keep_whole: Sequence[str] = (),
    ) -> None:
        """A table of results (stdout). Cells are values (made safe) or `styled(...)` Text. Columns named in
        `keep_whole`, and columns whose cells are values rather than sentences (at most four words), are never
        wrapped or cut."""
        cells = [[_cell(cell) for cell in row] for row in rows]
        whole = [
            name in keep_whole or all(row[i].plain.count(" ") <= 3 for row in cells)
            for i, name in enumerate(columns)
        ]
        widths = [max([len(name), *(row[i].cell_len for row in cells)]) for i, name in enumerate(columns)]
        if not self.console.is_terminal or not _fits(widths, whole, self.console.width):
            self._plain_rows(columns, cells, widths)
            return
        table = Table(title=title, show_lines=False, header_style="bold")
        for i, column in enumerate(columns):
            if whole[i]:
                table.add_column(column, no_wrap=True, min_width=widths[i], overflow="ignore")
            else:
                table.add_column(column, overflow="fold")
        for row in cells:
            table.add_row(*row)
        self.console.print(table)

    def _plain_rows(self, columns: Sequence[str], cells: list[list[Text]], widths: list[int]) -> None:
        """One line per row, columns padded to their widest cell; nothing cut, no box drawing."""
        last = len(columns) - 1
        lines = [[Text(name) for name in columns], *cells]
        for row in lines:
            line = Text()
            for i, cell in enumerate(row):
                line.append_text(cell)
                if i < last:
                    line.append(" " * (widths[i] - cell.cell_len + 2))
            line.rstrip()
            self.console.print(line, crop=False, overflow="ignore", no_wrap=True, soft_wrap=True)

    def result(self, text: str) -> None:
        """A result line as it happens (stdout; the JSON document replaces it with --json)."""
        if not self.json:
            self.text(text)

    def text(self, text: str) -> None:
        """A result line or block (stdout), made safe."""
        self.console.print(Text(safe(text)), soft_wrap=True)


def schema_of_command(version: int = 1) -> str:
    """`sophon-fleet/assets-verify/v1` for `sophon-fleet assets verify` (the running click command)."""
    ctx = click.get_current_context(silent=True)
    names: list[str] = []
    while ctx is not None and ctx.parent is not None:
        names.insert(0, ctx.info_name or "")
        ctx = ctx.parent
    return f"sophon-fleet/{'-'.join(names) or 'sophon-fleet'}/v{version}"


def _fits(widths: Sequence[int], whole: Sequence[bool], width: int) -> bool:
    """Whether the whole columns plus at least 12 cells of each text column fit a terminal `width` wide."""
    needed = sum(w if keep else min(w, 12) for w, keep in zip(widths, whole, strict=True))
    return needed + 3 * len(widths) + 1 <= width


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
