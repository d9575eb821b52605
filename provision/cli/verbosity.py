"""-v / -vv anywhere on the command line, and what they show.

- default and -q: nothing from the libraries; no traceback of theirs ever reaches the user (paramiko logs
  "Error reading SSH protocol banner" with a traceback for every box it cannot reach);
- -v: each box's commands and their timings (sophon-fleet's own debug log), secrets masked;
- -vv: the libraries' detail too (paramiko, urllib3), with their tracebacks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from rich.text import Text

from provision.cli.output import Output, safe

VERBOSITY_FLAGS = ("-v", "--verbose", "-q", "--quiet")
LIBRARIES = ("paramiko", "urllib3", "fabric", "invoke")
MASK = "***"


def hoist_verbosity(args: Sequence[str]) -> list[str]:
    """Move -v/-vv/-q given after a subcommand to the front, where the top-level group reads them, so
    `sophon-fleet preflight -i INV -vv` works as `sophon-fleet -vv preflight -i INV`. Nothing after `--`
    (a remote command's own flags) is touched."""
    args = list(args)
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if _is_verbosity(a)]
    rest = [a for a in args[:end] if not _is_verbosity(a)]
    return [*flags, *rest, *args[end:]]


def _is_verbosity(arg: str) -> bool:
    return arg in VERBOSITY_FLAGS or (len(arg) > 2 and arg.startswith("-v") and set(arg[1:]) == {"v"})


class _Secrets:
    """Values never to print (sudo and login passwords of this run), replaced by *** in the log."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()

    def add(self, value: str | None) -> None:
        if value and len(value) >= 3:
            with self._lock:
                self._values.add(value)

    def mask(self, text: str) -> str:
        with self._lock:
            values = sorted(self._values, key=len, reverse=True)
        for value in values:
            text = text.replace(value, MASK)
        return text


SECRETS = _Secrets()


class _ToConsole(logging.Handler):
    """Log records as dim lines on the error console: escaped, secrets masked."""

    def __init__(self, out: Output) -> None:
        super().__init__()
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = SECRETS.mask(self.format(record))
            self.out.err.print(Text(safe(text), style="dim"), soft_wrap=True)
        except Exception:  # a log line must never break the command  # noqa: BLE001
            self.handleError(record)


def configure_logging(out: Output) -> None:
    """Route the tool's and the libraries' logging by verbosity (see the module docstring)."""
    handler = _ToConsole(out)
    handler.setFormatter(logging.Formatter("%(relativeCreated)7.0fms %(name)s: %(message)s"))
    ours = logging.getLogger("provision")
    handler.setLevel(logging.DEBUG if out.verbosity >= 1 else logging.CRITICAL + 1)
    ours.handlers[:] = [handler]
    ours.setLevel(logging.DEBUG)  # the run log (cli/runlog.py) records the -v detail of every run
    ours.propagate = False
    logging.getLogger("provision.ssh.transport.wire").setLevel(
        logging.DEBUG if out.verbosity >= 2 else logging.INFO
    )
    for name in LIBRARIES:
        library = logging.getLogger(name)
        library.handlers[:] = [handler] if out.verbosity >= 2 else [logging.NullHandler()]
        library.setLevel(logging.DEBUG if out.verbosity >= 2 else logging.CRITICAL + 1)
        library.propagate = False
