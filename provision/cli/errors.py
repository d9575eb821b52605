"""Exit codes, and the translation of core exceptions into a message and an exit code."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from enum import IntEnum
from typing import Any, TypeVar

import click

from provision import errors
from provision.cli.output import safe

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("provision.cli")


class Exit(IntEnum):
    """Exit codes of every command (documented in the README)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    NOT_READY = 3
    UNREACHABLE = 4
    INTEGRITY = 5
    DISK_FULL = 6
    SIM = 7
    INTERRUPTED = 130


EXIT_BY_ERROR: tuple[tuple[type[errors.FleetError], Exit], ...] = (
    (errors.ConfigError, Exit.USAGE),
    (errors.ConnectError, Exit.UNREACHABLE),
    (errors.NotReadyError, Exit.NOT_READY),
    (errors.LockedError, Exit.NOT_READY),  # another run holds the box: nothing was changed (as memory apply)
    (errors.IntegrityError, Exit.INTEGRITY),
    (errors.DiskFullError, Exit.DISK_FULL),
    (errors.SimError, Exit.SIM),
    (errors.FleetError, Exit.FAILED),
)


def exit_code_for(exc: errors.FleetError) -> Exit:
    """The exit code for a core error (most specific class first)."""
    return next(code for cls, code in EXIT_BY_ERROR if isinstance(exc, cls))


def reports_errors(func: F) -> F:
    """Turn core errors into `error: ...` (+ `hint: ...`) on stderr and the matching exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except errors.FleetError as exc:
            log.error("error: %s%s", exc.message, f" (hint: {exc.hint})" if exc.hint else "")
            click.secho(f"error: {safe(exc.message)}", fg="red", err=True)
            if exc.hint:
                click.echo(f"hint: {safe(exc.hint)}", err=True)
            raise SystemExit(int(exit_code_for(exc))) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            raise SystemExit(int(Exit.INTERRUPTED)) from None

    return wrapper  # type: ignore[return-value]


def exit_with_worst(errors: Iterable[errors.FleetError | None]) -> None:
    """Exit with the most severe code among the hosts' errors; return when there are none."""
    codes = [exit_code_for(e) for e in errors if e is not None]
    if codes:
        raise SystemExit(int(max(codes)))
