"""Memory layouts over a fleet: plan every box from its own facts (one round trip each), then bring the
boxes to their plans in rolling batches through the fleet engine. `memory plan/apply` and `play`'s memory
step both use it; the per-box chain itself is `apply.apply_box`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from provision.errors import FleetError
from provision.facts.parse import Facts, gather
from provision.fleet import FleetResult, run_fleet
from provision.inventory.hosts import Host
from provision.memory.apply import ApplyOptions, BoxResult, Progress, apply_box
from provision.memory.plan import BoxMemory, BoxPlan, Request, box_memory, plan_box
from provision.ssh.transport import Transport

TransportFor = Callable[[Host], Transport]


@dataclass(frozen=True)
class PlannedBox:
    """A box's memory facts and plan, or why it could not be planned (unreachable, facts missing)."""

    host: Host
    box: BoxMemory | None
    plan: BoxPlan | None
    error: FleetError | None


def plan_one(name: str, facts: Facts, request: Request) -> tuple[BoxMemory, BoxPlan]:
    """What one box has and what `request` means for it."""
    box = box_memory(name, facts)
    return box, plan_box(box, request)


def plan_fleet(
    hosts: Sequence[Host], transport_for: TransportFor, request: Request, forks: int
) -> list[PlannedBox]:
    """Gather facts on every box in parallel (one round trip each) and plan each; changes nothing."""
    result = run_fleet(
        hosts, lambda host: plan_one(host.name, gather(transport_for(host)), request), forks=forks
    )
    return [PlannedBox(o.host, *(o.value if o.value is not None else (None, None)), o.error) for o in result]


def apply_fleet(
    planned: Sequence[PlannedBox],
    transport_for: TransportFor,
    request: Request,
    options: ApplyOptions,
    *,
    forks: int,
    serial: str | int | None = None,
    max_fail_percent: float | None = None,
    progress: Progress,
    cancel: threading.Event | None = None,
) -> FleetResult[Host, BoxResult]:
    """Bring every planned box to its target, `serial` boxes at a time; a box that could not be planned
    keeps its error. Nothing is raised for a box: see FleetResult."""
    by_name = {p.host.name: p for p in planned}

    def one(host: Host) -> BoxResult:
        p = by_name[host.name]
        if p.error is not None:
            raise p.error
        assert p.plan is not None and p.box is not None
        return apply_box(
            transport_for(host), p.plan, request, p.box, options, progress=progress, cancel=cancel
        )

    hosts = [p.host for p in planned]
    return run_fleet(hosts, one, forks=forks, serial=serial, max_fail_percent=max_fail_percent)
