"""The controller's own log of its runs: `SOPHON_FLEET_HOME/runs/<UTC time>-<pid>.log`, one per command,
with the command line and every box's commands and timings (the -v detail, always recorded, passwords
masked). The newest 50 are kept. `sophon-fleet logs --last [N]` prints them."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from provision.cli.verbosity import SECRETS
from provision.errors import ConfigError
from provision.settings import load_settings

KEEP = 50


class _Masked(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return SECRETS.mask(super().format(record))


def runs_dir() -> Path:
    return load_settings().home / "runs"


def start_run_log(argv: list[str]) -> logging.Handler | None:
    """Open this run's log and attach it to sophon-fleet's logger; None when the home is not writable (the
    command still runs)."""
    try:
        directory = runs_dir()
        directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        handler = logging.FileHandler(directory / f"{stamp}-{os.getpid()}.log", encoding="utf-8", delay=False)
    except (OSError, ConfigError):  # a bad config file is the command's error to report (exit 2)
        return None
    handler.setFormatter(_Masked("%(asctime)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    logger = logging.getLogger("provision")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.info("sophon-fleet %s (python %s)", " ".join(argv), sys.version.split()[0])
    _prune(directory)
    return handler


def stop_run_log(handler: logging.Handler) -> None:
    """Detach the run's log, then close it (a closed FileHandler still attached would reopen its file on the
    next record: a leaked file when commands run in-process, as in tests)."""
    logging.getLogger("provision").removeHandler(handler)
    handler.close()


def _prune(directory: Path) -> None:
    for old in sorted(directory.glob("*.log"))[:-KEEP]:
        try:
            old.unlink()
        except OSError:
            pass


def last_runs(count: int) -> list[Path]:
    """The newest `count` run logs, oldest first (`logs` itself keeps none)."""
    return sorted(runs_dir().glob("*.log"))[-count:]
