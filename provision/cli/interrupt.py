"""One Ctrl-C rule for every command that changes boxes.

The first Ctrl-C sets the run's cancel event: each box stops before its next stage that changes
something (a file, a boot image, a runtime, a reboot) and the command says so; the summary or recap, with
each box's state, still prints. A second Ctrl-C aborts at once (exit 130), after printing what is known
so far (the command's `on_abort`: the recap or summary up to now): what was interrupted is
resumable (pushes resume at the byte, /boot is replaced only by an atomic rename, runtimes switch by a
symlink), and nothing half-written is ever at a final path.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from provision.cli.output import Output

FIRST = "interrupt: each box stops before its next step that changes something; Ctrl-C again to abort now"
SECOND = "aborting now (exit 130): what was interrupted resumes on the next run"


@contextmanager
def interruptible(
    out: Output, first: str = FIRST, on_abort: Callable[[], None] | None = None
) -> Iterator[threading.Event]:
    """Install the rule for the `with` block; yields the cancel event to hand to the core. `on_abort` prints
    what is known when a second Ctrl-C aborts (it must not wait for the worker threads)."""
    cancel = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if not cancel.is_set():
            cancel.set()
            out.err.print(first, markup=False, highlight=False)
            return
        out.err.print(SECOND, markup=False, highlight=False)
        if on_abort is not None:
            try:
                on_abort()
            except Exception:  # noqa: BLE001 - a recap that cannot print must not stop the abort
                pass
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)  # the worker threads are mid-stage; waiting for them is what a second Ctrl-C refuses

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield cancel
    finally:
        signal.signal(signal.SIGINT, previous)
