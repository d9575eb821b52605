"""The one exception tree of sophon-fleet.

    FleetError                    anything the tool reports to the user
    ├── ConfigError               a bad file or flag: inventory, manifest, playbook (exit 2)
    ├── ConnectError              a box cannot be reached or authenticated (exit 4)
    │   ├── HostKeyError          unknown or changed host key
    │   ├── TransferFailed        a download server stopped mid-file (resumable)
    │   └── UnreachableError      no answer within the timeouts (dark box, dead link): retrying now won't help
    ├── RemoteError               a command on a box failed (exit 1)
    │   ├── FactError             a box's output cannot be understood (garbage, truncated)
    │   └── SudoError             sudo refused: a wrong password, none given, or not a sudoer
    ├── NotReadyError             a box is not ready for what was asked (exit 3)
    │   └── RebootTimeout         a box did not come back from its reboot in time
    ├── IntegrityError            a size or sha256 does not match (exit 5)
    ├── DiskFullError             not enough free space (exit 6)
    ├── SimError                  the simulated fleet cannot do what was asked (exit 7)
    ├── LockedError               another run holds a box's lock
    ├── SkippedError              a box not tried: the failure budget (--max-fail-percent) was spent
    ├── Cancelled                 the operator interrupted the run
    ├── ApplyFailed               a memory layout change did not end well (which image the box has)
    ├── CompileError              the model compiler failed (exit 1)
    └── Retry                     internal: caught by a retry loop, never shown as such
        ├── ChannelBroken         a channel to a box broke mid-conversation: reopen and resume
        ├── SourceUnavailable     a download source cannot serve a file: try the next one
        ├── TransferInterrupted   a download stream stopped early: resume from the bytes on disk
        └── Mismatch              downloaded bytes differ from the pin: try again / the next source

Core code raises these with the data a user needs (file, line, key, host, fix); only `cli/` turns them into
text and exit codes. Library errors (paramiko, sockets, requests) become these at the module that calls
the library. (The box-side scripts in `boxside/` run on the box's own Python and report errors as JSON.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: errors.py imports nothing of the tool at run time
    from provision.memory.apply import Stage
    from provision.memory.bootimage import Backup


class FleetError(Exception):
    """Base of every error sophon-fleet reports; `hint` says how to fix it."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConfigError(FleetError):
    """A malformed input file or flag, located by file, line and key where known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = ":".join(str(p) for p in (file, line) if p is not None)
        if key:
            where = f"{where}: {key}" if where else key
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.file, self.line, self.key = file, line, key


class ConnectError(FleetError):
    """A box cannot be reached or authenticated."""


class HostKeyError(ConnectError):
    """The box's host key is unknown (and not accepted) or has changed."""


class UnreachableError(ConnectError):
    """No answer from the box within the connect timeout, or its link went dead mid-operation."""


class RemoteError(FleetError):
    """A command on a box failed."""


class FactError(RemoteError):
    """Output gathered from a box cannot be parsed (garbage, truncated, an error line)."""


class SudoError(RemoteError):
    """sudo refused: `refusal` is "wrong-password", "no-password" or "not-allowed" (provision/ssh/sudo.py)."""

    def __init__(self, message: str, *, refusal: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.refusal = refusal


class NotReadyError(FleetError):
    """A box is not ready for the requested step."""


class IntegrityError(FleetError):
    """Size or sha256 of a file does not match what was expected."""


class DiskFullError(FleetError):
    """Not enough free space where a file has to go."""


class SimError(FleetError):
    """The simulated fleet cannot do what was asked."""


class TransferFailed(ConnectError):
    """The server stopped delivering mid-file (dropped connection, timeout): resume from the bytes kept."""


class RebootTimeout(NotReadyError):
    """The box did not come back (new boot_id + readiness) within the timeout."""

    def __init__(self, message: str, *, host: str, waited: float, last_error: str | None, hint: str) -> None:
        super().__init__(message, hint=hint)
        self.host, self.waited, self.last_error = host, waited, last_error


class LockedError(FleetError):
    """Another run holds the box's lock."""

    def __init__(
        self, message: str, *, owner: dict[str, object] | None, hint: str, heartbeat_age: float | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.owner = owner
        self.heartbeat_age = heartbeat_age  # seconds since the holder last touched <lock>/heartbeat


class SkippedError(FleetError):
    """The host was not tried: the fleet's failure budget (--max-fail-percent) was spent first."""


class Cancelled(FleetError):
    """The operator interrupted the run; `state` says where the box was left."""


class ApplyFailed(FleetError):
    """A box that did not end well; `image` says which boot image it was left with, `recovery` what to do."""

    def __init__(
        self,
        message: str,
        *,
        host: str,
        stage: Stage,
        image: str,
        backup: Backup | None = None,
        recovery: tuple[str, ...] = (),
        hint: str | None = None,
        refused: bool = False,
        cancelled: bool = False,
        unreachable: bool = False,
    ) -> None:
        super().__init__(message, hint=hint)
        self.host, self.stage, self.image, self.backup = host, stage, image, backup
        self.recovery, self.refused, self.cancelled = recovery, refused, cancelled
        self.unreachable = unreachable  # the box stopped answering (dark, or its link went dead)


class CompileError(FleetError):
    """The model compiler (tpu-mlir, its venv, the graph export) failed; the message says which step."""


class Retry(FleetError):
    """Internal: raised inside a retry loop and caught there (never shown to the user as such)."""


class ChannelBroken(Retry):
    """The channel closed or failed mid-conversation: reopen and resume."""


class SourceUnavailable(Retry):
    """This source cannot serve the file (missing, refused, unreachable): try the next one."""


class TransferInterrupted(Retry):
    """The stream stopped early (dropped connection, timeout): resume from the bytes on disk."""


class Mismatch(Retry):
    """Downloaded bytes differ from what is pinned: try again, or the next source."""
