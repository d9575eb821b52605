"""Rich progress bars fed by core progress events (bytes, speed, ETA; also while hashing)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from provision.cli.output import Output, safe

PHASES = {
    "hashing": "hashing",
    "downloading": "download",
    "sending": "sending",
    "fetching": "fetching",
    "retry": "retrying",
    "done": "verified",
    "cached": "cached",
    "present": "present",
    "probing": "probing",
    "committed": "verified",
    "unpacked": "unpacked",
}


@contextmanager
def progress_bars(out: Output) -> Iterator[Any]:
    """Yield a callback `(key, phase, done, total, label=None)` drawing one bar per key on stderr (on a
    terminal; elsewhere one line per key and phase)."""
    disabled = out.json or out.verbosity < 0
    lines = not disabled and not out.err.is_terminal  # a pipe or a log: one line per phase, no bars
    bars = Progress(
        TextColumn("{task.fields[phase]:>9}"),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=out.err,
        disable=disabled or lines,  # drawn on a pipe, the bars would be printed whole at the end
    )
    tasks: dict[str, Any] = {}
    phases: dict[str, str] = {}
    lock = threading.Lock()

    def update(key: str, phase: str, done: int, total: int | None, label: str | None = None) -> None:
        with lock:
            shown = PHASES.get(phase, phase)
            if lines and phases.get(label or key) != shown:
                phases[label or key] = shown
                out.info(f"{shown:>9} {label or key}")
            if key not in tasks:
                tasks[key] = bars.add_task(safe(label or key, multiline=False), total=total, phase="")
            fields: dict[str, Any] = {"phase": PHASES.get(phase, phase)}
            if label:
                fields["description"] = safe(label, multiline=False)
            if phase == "retry":
                bars.update(tasks[key], **fields)
                return
            if phase == "hashing" and done <= (bars.tasks[tasks[key]].completed or 0):
                bars.reset(tasks[key], total=total)
            bars.update(tasks[key], completed=done, total=total, **fields)

    with bars:
        yield update
