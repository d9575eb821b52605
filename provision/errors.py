"""The one exception tree of sophon-fleet.

    FleetError                    anything the tool reports to the user
    ├── ConfigError               a bad file or flag: inventory, manifest, playbook (exit 2)
    ├── ConnectError              a box cannot be reached or authenticated (exit 4)
    │   └── HostKeyError          unknown or changed host key
    ├── RemoteError               a command on a box failed (exit 1)
    │   └── FactError             a box's output cannot be understood (garbage, truncated)
    ├── NotReadyError             a box is not ready for what was asked (exit 3)
    ├── IntegrityError            a size or sha256 does not match (exit 5)
    ├── DiskFullError             not enough free space (exit 6)
    ├── SimError                  the simulated fleet cannot do what was asked (exit 7)
    └── CompileError              the model compiler failed (exit 1)

Core code raises these with the data a user needs (file, line, key, host, fix); only `cli/` turns them into
text and exit codes.
"""

from __future__ import annotations


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


class RemoteError(FleetError):
    """A command on a box failed."""


class FactError(RemoteError):
    """Output gathered from a box cannot be parsed (garbage, truncated, an error line)."""


class NotReadyError(FleetError):
    """A box is not ready for the requested step."""


class IntegrityError(FleetError):
    """Size or sha256 of a file does not match what was expected."""


class DiskFullError(FleetError):
    """Not enough free space where a file has to go."""


class SimError(FleetError):
    """The simulated fleet cannot do what was asked."""


class CompileError(FleetError):
    """The model compiler (tpu-mlir, its venv, the graph export) failed; the message says which step."""
