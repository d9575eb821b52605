"""A lock on the box itself, so two runs (from one controller or two) never change the same box at once.

The lock is a directory made with `mkdir` (atomic) under /data, which survives the reboots an operation
makes; an `owner` file inside says who holds it (controller host, user, pid, operation, since). A second
run refuses with the owner named. A lock left by a run that was killed is removed with `--break-lock`,
which refuses while the owner is alive: its pid when it runs on this controller, otherwise its heartbeat
(`<lock>/heartbeat`, touched every HEARTBEAT_S while the run holds the lock) must be older than STALE_S.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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


_HELD: set[tuple[str, str]] = set()  # (host, lock path) held by a `box_lock` block of this process now
HEARTBEAT_S = 15.0  # the holder touches <lock>/heartbeat this often while it runs (not while a box reboots)
# a lock whose heartbeat is older than this counts as abandoned when its owner's liveness cannot be checked
# directly (another controller): longer than any reboot a run waits for
STALE_S = 600.0


def acquire(transport: Transport, name: str, owner: dict[str, object], *, break_lock: bool = False) -> None:
    """Take the lock `name` on the box, or raise LockedError naming who holds it. With `break_lock`, a lock
    whose owner is gone is removed first; one whose owner is alive is refused all the same: on this
    controller its pid is checked, from elsewhere its heartbeat must be older than STALE_S."""
    path = lock_path(name)
    try:
        _take(transport, path, owner)
    except LockedError as exc:
        if not break_lock:
            raise
        alive = owner_alive(exc.owner, exc.heartbeat_age, held_here=(transport.host.name, path) in _HELD)
        if alive:
            raise LockedError(
                f"{exc.message}; not breaking it: {alive}",
                owner=exc.owner,
                heartbeat_age=exc.heartbeat_age,
                hint="wait for that run to finish (or stop it): --break-lock removes only an abandoned lock",
            ) from None
        transport.run(["rm", "-rf", "--", path])
        _take(transport, path, owner)


def owner_alive(
    owner: dict[str, object] | None, heartbeat_age: float | None, *, held_here: bool = False
) -> str | None:
    """Why the lock's owner counts as alive, or None when it is gone. `held_here`: a `box_lock` block of
    this very process holds it now (a lock with our own pid that no block holds was left by an earlier
    call in this process, e.g. a library user's)."""
    pid = owner.get("pid") if owner else None
    if owner and owner.get("controller") == socket.gethostname() and isinstance(pid, int):
        if pid == os.getpid():
            return "this process holds it" if held_here else None
        return f"its run (pid {pid}) is still running on this controller" if pid_running(pid) else None
    if heartbeat_age is not None and heartbeat_age < STALE_S:
        return f"its heartbeat is {heartbeat_age:.0f} s old (a lock is abandoned after {STALE_S:.0f} s)"
    return None


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _take(transport: Transport, path: str, owner: dict[str, object]) -> None:
    owner_text = json.dumps(owner, sort_keys=True)
    script = (
        f"mkdir -p {LOCK_DIR} && "
        f"if mkdir -- {path} 2>/dev/null; then "
        f'if printf "%s\\n" "$1" > {path}/owner && touch {path}/heartbeat; then echo acquired; '
        f"else rm -rf -- {path}; exit 1; fi; "
        f"else echo held; t=$(stat -c %Y {path}/heartbeat 2>/dev/null || stat -c %Y {path}); "
        f"echo $(( $(date +%s) - t )); cat -- {path}/owner 2>/dev/null; fi"
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
    age = float(lines[1]) if len(lines) > 1 and lines[1].lstrip("-").isdigit() else None
    held_by = _owner(lines[2:])
    who = (
        f"{held_by.get('operation')} by {held_by.get('user')}@{held_by.get('controller')} "
        f"(pid {held_by.get('pid')}) since {held_by.get('since')}"
        if held_by
        else "a run that is just starting (no owner written yet)"
    )
    raise LockedError(
        f"{transport.host.name} is locked: {who}",
        owner=held_by,
        heartbeat_age=age,
        hint=f"wait for that run to finish; if it was killed, run again with --break-lock (removes {path})",
    )


def release(transport: Transport, name: str) -> None:
    transport.run(["rm", "-rf", "--", lock_path(name)])


@dataclass
class Held:
    """A lock taken by this run; after the block, `released` says whether it could be removed again."""

    path: str
    released: bool = False


@contextmanager
def box_lock(transport: Transport, name: str, operation: str, *, break_lock: bool = False) -> Iterator[Held]:
    """Hold the lock for the duration of the block; released however the block ends (best effort when
    the box cannot be reached: the lock then says who left it, and `Held.released` stays False)."""
    acquire(transport, name, owner_info(operation), break_lock=break_lock)
    held = Held(lock_path(name))
    key = (transport.host.name, held.path)
    _HELD.add(key)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(transport, held.path, stop), daemon=True)
    beat.start()
    try:
        yield held
    finally:
        stop.set()
        beat.join(timeout=1.0)  # a beat stuck on an unreachable box must not hold up the run's end
        _HELD.discard(key)
        try:
            release(transport, name)
            held.released = True
        except FleetError:
            pass  # unreachable box: the owner file tells the next run who left the lock


def _heartbeat(transport: Transport, path: str, stop: threading.Event) -> None:
    """Touch <lock>/heartbeat every HEARTBEAT_S while the lock is held (a box that is rebooting or
    unreachable simply misses beats)."""
    while not stop.wait(HEARTBEAT_S):
        try:
            transport.run(["touch", "--", f"{path}/heartbeat"], check=False, timeout=HEARTBEAT_S)
        except FleetError:
            continue


def _owner(lines: list[str]) -> dict[str, object] | None:
    try:
        value = json.loads("\n".join(lines))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
