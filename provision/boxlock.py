"""A lock on the box itself, so two runs (from one controller or two) never change the same box at once.

The lock is a directory made with `mkdir` (atomic) under /data, which survives the reboots an operation
makes; an `owner` file inside says who holds it (controller host, user, pid, operation, since). A second
run refuses with the owner named. A lock left by a run that was killed can be removed with
`--break-lock` once you are sure that run is gone.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from provision.boxpaths import LOCK_DIR
from provision.errors import FleetError, LockedError, RemoteError
from provision.ssh.transport import Transport, quote_command


def owner_info(operation: str) -> dict[str, object]:
    """Who takes the lock (written on the box for whoever finds it held)."""
    return {
        "controller": socket.gethostname(),
        "user": getpass.getuser(),
        "pid": os.getpid(),
        "operation": operation,
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def lock_path(name: str) -> str:
    return f"{LOCK_DIR}/{name}.lock"


def acquire(transport: Transport, name: str, owner: dict[str, object], *, break_lock: bool = False) -> None:
    """Take the lock `name` on the box, or raise LockedError naming who holds it."""
    path = lock_path(name)
    owner_text = json.dumps(owner, sort_keys=True)
    script = (
        f"mkdir -p {LOCK_DIR} && "
        + (f"rm -rf -- {path}; " if break_lock else "")
        + f"if mkdir -- {path} 2>/dev/null; then "
        f'if printf "%s\\n" "$1" > {path}/owner; then echo acquired; else rm -rf -- {path}; exit 1; fi; '
        f"else echo held; cat -- {path}/owner 2>/dev/null; fi"
    )
    result = transport.run(quote_command(["sh", "-c", script, "sh", owner_text]), check=False)
    if not result.ok:
        why = result.stderr.strip() or result.stdout.strip()
        raise RemoteError(
            f"{transport.host.name}: cannot take the lock {path}: {why}",
            hint="is /data full or read-only? (`df -h /data` on the box)",
        )
    lines = result.stdout.splitlines()
    if lines and lines[0] == "acquired":
        return
    if not lines or lines[0] != "held":
        raise RemoteError(f"{transport.host.name}: cannot take the lock {path}: {result.stdout.strip()}")
    held_by = _owner(lines[1:])
    who = (
        f"{held_by.get('operation')} by {held_by.get('user')}@{held_by.get('controller')} "
        f"(pid {held_by.get('pid')}) since {held_by.get('since')}"
        if held_by
        else "a run that is just starting (no owner written yet)"
    )
    raise LockedError(
        f"{transport.host.name} is locked: {who}",
        owner=held_by,
        hint=f"wait for that run to finish; if it was killed, run again with --break-lock (removes {path})",
    )


def release(transport: Transport, name: str) -> None:
    transport.run(["rm", "-rf", "--", lock_path(name)])


@contextmanager
def box_lock(transport: Transport, name: str, operation: str, *, break_lock: bool = False) -> Iterator[None]:
    """Hold the lock for the duration of the block; released however the block ends (best effort when
    the box cannot be reached: the lock then says who left it)."""
    acquire(transport, name, owner_info(operation), break_lock=break_lock)
    try:
        yield
    finally:
        try:
            release(transport, name)
        except FleetError:
            pass  # unreachable box: the owner file tells the next run who left the lock


def _owner(lines: list[str]) -> dict[str, object] | None:
    try:
        value = json.loads("\n".join(lines))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
