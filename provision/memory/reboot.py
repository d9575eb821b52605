"""Reboot a box the way ansible's `reboot` action does, and know when it is back.

    record /proc/sys/kernel/random/boot_id → `sudo reboot` (the dropped connection is expected) → poll with
    capped exponential backoff and jitter, each poll a fresh connection, until boot_id differs → run a
    readiness command → done. Every wait has an explicit limit; there is no fixed sleep.

The deadline is checked between polls; one poll can overrun it by at most the transport's connect and
command timeouts.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from provision.backoff import backoff_delay
from provision.errors import Cancelled, ConnectError, RebootTimeout, RemoteError, SudoError
from provision.ssh.sudo import sudo_error
from provision.ssh.transport import Transport

BOOT_ID = "/proc/sys/kernel/random/boot_id"
DEFAULT_REBOOT_TIMEOUT = 600.0  # seconds a box may take to come back: memory apply, rollback and play


@dataclass(frozen=True)
class RebootPolicy:
    """Seconds: `timeout` for the whole wait; polls start after `first_poll` and back off to `cap`."""

    timeout: float = DEFAULT_REBOOT_TIMEOUT
    first_poll: float = 1.0
    cap: float = 10.0
    command_timeout: float = 15.0
    readiness: str = "whoami"  # what ansible runs (`test_command`) before it calls a box back

    def delays(self, rng: random.Random) -> Callable[[], float]:
        polls = itertools.count(1)
        return lambda: backoff_delay(next(polls), self.first_poll, self.cap, rng)


def read_boot_id(transport: Transport, *, timeout: float = 15.0) -> str:
    """The box's current boot_id. Raises ConnectError / RemoteError."""
    boot_id = transport.run(["cat", BOOT_ID], timeout=timeout).stdout.strip()
    if not boot_id:
        raise RemoteError(f"{transport.host.name}: {BOOT_ID} is empty")
    return boot_id


def request_reboot(transport: Transport, *, timeout: float = 15.0) -> None:
    """`sudo reboot`; a connection that drops (or a command that never returns) is the expected outcome.
    Raises RemoteError when sudo refuses or reboot fails before the box goes down."""
    try:
        result = transport.run(["reboot"], sudo=True, timeout=timeout, check=False)
    except SudoError:
        transport.close()
        raise
    except (ConnectError, RemoteError):
        result = None  # dropped or timed out: the box is going down
    finally:
        transport.close()
    if result is None or result.exit_code in (0, -1):
        return
    text = f"{result.stdout} {result.stderr}".strip()
    refused = sudo_error(transport.host.name, text, doing="sudo reboot")
    if refused is not None:
        raise refused
    raise RemoteError(f"{transport.host.name}: `sudo reboot` exited {result.exit_code}: {text}")


def wait_for_new_boot(
    transport: Transport,
    old_boot_id: str,
    policy: RebootPolicy,
    *,
    cancel: threading.Event | None = None,
    on_poll: Callable[[int, str | None], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> str:
    """Poll until the box answers with a boot_id other than `old_boot_id` and passes the readiness command;
    returns the new boot_id. Raises RebootTimeout past `policy.timeout`, Cancelled when `cancel` is set."""
    started = clock()
    deadline = started + policy.timeout
    next_delay = policy.delays(rng or random.Random())
    last_error: str | None = None
    attempt = 0
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            raise _timeout(transport, policy, clock() - started, last_error)
        if _wait(cancel, min(next_delay(), remaining)):
            raise Cancelled(f"{transport.host.name}: stopped waiting for the reboot")
        attempt += 1
        try:
            transport.reconnect()
            boot_id = read_boot_id(transport, timeout=policy.command_timeout)
            if boot_id == old_boot_id:
                last_error = "still the old boot (the reboot has not started yet)"
            else:
                transport.run(policy.readiness, timeout=policy.command_timeout)
                return boot_id
        except (ConnectError, RemoteError) as exc:
            last_error = f"unreachable: {exc.message}" if isinstance(exc, ConnectError) else exc.message
            transport.close()
        if on_poll is not None:
            on_poll(attempt, last_error)


def _wait(cancel: threading.Event | None, seconds: float) -> bool:
    """Sleep `seconds`, waking early (True) when cancelled."""
    if cancel is None:
        time.sleep(seconds)
        return False
    return cancel.wait(seconds)


def _timeout(
    transport: Transport, policy: RebootPolicy, waited: float, last_error: str | None
) -> RebootTimeout:
    name = transport.host.name
    return RebootTimeout(
        f"{name} did not come back within {policy.timeout:g} s after the reboot"
        + (f" (last: {last_error})" if last_error else ""),
        host=name,
        waited=waited,
        last_error=last_error,
        hint=f"check the box's console or power; `sophon-fleet memory rollback {name}` once it answers",
    )


@dataclass(frozen=True)
class Rebooted:
    """A verified reboot: the boot_id before and after, and how long the box took."""

    host: str
    old_boot_id: str
    new_boot_id: str
    seconds: float

    def as_dict(self) -> dict[str, object]:
        return {
            "host": self.host,
            "old_boot_id": self.old_boot_id,
            "new_boot_id": self.new_boot_id,
            "seconds": round(self.seconds, 2),
        }


def reboot_box(
    transport: Transport, policy: RebootPolicy, *, cancel: threading.Event | None = None
) -> Rebooted:
    """Reboot one box and wait until it runs a new boot and answers (`sophon-fleet reboot`): sudo is
    checked first, so a refused password never leaves a box half-way. Raises SudoError, ConnectError,
    RebootTimeout, Cancelled (Ctrl-C before the reboot was requested, or while waiting)."""
    started = time.monotonic()
    transport.check_sudo()
    old = read_boot_id(transport)
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"{transport.host.name}: interrupted before the reboot; nothing was done")
    request_reboot(transport, timeout=policy.command_timeout)
    new = wait_for_new_boot(transport, old, policy, cancel=cancel)
    return Rebooted(transport.host.name, old, new, time.monotonic() - started)
