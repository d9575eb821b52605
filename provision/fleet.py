"""The one fleet engine: run one function per box, with bounded parallelism, rolling batches and a
failure budget. Every multi-box operation (preflight, memory, push, deploy, bench, play) goes through it.

A box's failure never stops the others (fabric's GroupResult, but as data): `run_fleet` returns a
`FleetResult` mapping every box to its value or its error, in inventory order. Whatever a box's task
raises becomes that box's result: our errors as they are, anything else (a library's error, a bug) as a
FleetError naming it. Only the failure budget (`--max-fail-percent`) stops starting new batches; boxes
never started are recorded as skipped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from provision.errors import ConfigError, ConnectError, FleetError

T = TypeVar("T")
DEFAULT_FORKS = 32


class Named(Protocol):
    """What the engine runs a task for: a Host, or anything else named after one (a push target)."""

    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=Named)


class SkippedError(FleetError):
    """The host was not tried: the fleet's failure budget (--max-fail-percent) was spent first."""


@dataclass(frozen=True)
class HostOutcome(Generic[N, T]):
    """One box's value or error, and how long it took."""

    host: N
    value: T | None
    error: FleetError | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def unreachable(self) -> bool:
        return isinstance(self.error, ConnectError)


@dataclass(frozen=True)
class FleetResult(Generic[N, T]):
    """Every host's outcome, in inventory order."""

    outcomes: tuple[HostOutcome[N, T], ...]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.outcomes)

    def __len__(self) -> int:
        return len(self.outcomes)

    def __getitem__(self, name: str) -> HostOutcome[N, T]:
        for outcome in self.outcomes:
            if outcome.host.name == name:
                return outcome
        raise KeyError(name)

    @property
    def succeeded(self) -> list[HostOutcome[N, T]]:
        return [o for o in self.outcomes if o.ok]

    @property
    def failed(self) -> list[HostOutcome[N, T]]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def unreachable(self) -> list[HostOutcome[N, T]]:
        return [o for o in self.outcomes if o.unreachable]


def parse_serial(value: str | int | None, total: int) -> int:
    """`--serial N` or `N%` → batch size (at least 1); None → everything in one batch."""
    if value is None or value == "":
        return max(total, 1)
    text = str(value).strip()
    try:
        if text.endswith("%"):
            percent = float(text[:-1])
            if not 0 < percent <= 100:
                raise ValueError
            return max(1, math.floor(total * percent / 100))
        size = int(text)
        if size < 1:
            raise ValueError
        return size
    except ValueError:
        raise ConfigError(f"must be a positive number or percentage, not {text!r}", key="--serial") from None


def run_fleet(
    hosts: Sequence[N],
    task: Callable[[N], T],
    *,
    forks: int = DEFAULT_FORKS,
    serial: str | int | None = None,
    max_fail_percent: float | None = None,
) -> FleetResult[N, T]:
    """Run `task(host)` for every host, at most `forks` at a time, batch by batch.

    After each batch, if more than `max_fail_percent` of all hosts have failed, later batches are skipped.
    Exceptions that are not FleetErrors (bugs) are recorded as the host's error too, never raised.
    """
    if forks < 1:
        raise ConfigError("must be at least 1", key="--forks")
    size = parse_serial(serial, len(hosts))
    outcomes: dict[str, HostOutcome[N, T]] = {}
    with ThreadPoolExecutor(max_workers=min(forks, max(size, 1)), thread_name_prefix="fleet") as pool:
        for start in range(0, len(hosts), size):
            batch = hosts[start : start + size]
            failed = sum(1 for o in outcomes.values() if not o.ok)
            if over_budget(failed, len(hosts), max_fail_percent):
                for host in batch:
                    outcomes[host.name] = HostOutcome(host, None, _skipped(max_fail_percent), 0.0)
                continue
            for outcome in pool.map(lambda h: _attempt(h, task), batch):
                outcomes[outcome.host.name] = outcome
    return FleetResult(tuple(outcomes[h.name] for h in hosts))


def _attempt(host: N, task: Callable[[N], T]) -> HostOutcome[N, T]:
    started = time.monotonic()
    try:
        return HostOutcome(host, task(host), None, time.monotonic() - started)
    except FleetError as exc:
        return HostOutcome(host, None, exc, time.monotonic() - started)
    except Exception as exc:  # a bug must not take the rest of the fleet down; it is reported per host
        error = FleetError(f"{host.name}: internal error: {exc!r}", hint="please report this as a bug")
        error.__cause__ = exc
        return HostOutcome(host, None, error, time.monotonic() - started)


def over_budget(failed: int, total: int, max_fail_percent: float | None) -> bool:
    """More than `max_fail_percent` of `total` boxes failed: the one rule for stopping a rolling run
    (`run_fleet` between batches, `play` between steps)."""
    return max_fail_percent is not None and failed * 100 > max_fail_percent * total


def _skipped(max_fail_percent: float | None) -> SkippedError:
    return SkippedError(
        f"skipped: more than {max_fail_percent:g}% of the hosts failed",
        hint="fix the failed hosts or raise --max-fail-percent",
    )
