"""Planning TPU memory layouts: what each box has, what it should have, and what `memory apply` will do.

Pure functions from facts to a plan; nothing here connects. A plan per box is one of

    nothing   the box already has the target layout (no upload, no reboot)
    apply     memory_edit -c, swap the boot image, reboot, verify
    check     the box's maxima are unknown (no memory_edit kit on it yet): apply puts the kit there, reads
              the maxima with `-p` and plans again — which may end in `nothing`, without a reboot
    refused   the request cannot be met on this box (over its max, below the model's threshold, wrong chip,
              heaps unreadable); nothing is changed

Default target (no explicit sizes): the manifest's recommended layout clipped to the box's own maxima
(7615/3072/3072 becomes 7615/3071/3071 with memory_edit v2.10+ on a 16 GB BM1684X: heaps the manifest sets
equal are kept equal, like sophon-demo's newer samples), never below the variant's threshold. Explicit
sizes are taken as they are, and refused when over a maximum or when their npu + vpp (what the runtime
allocates from, see `memory.layout`) is below the variant's threshold. A box without a kit (maxima unknown)
that already has the target a 16 GB BM1684X would get is left alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from provision.facts.parse import Facts
from provision.manifest import Manifest
from provision.memory.layout import ASSUMED_MAX_16GB_BM1684X, HEAPS, Layout, plan_layout

SUPPORTED_CHIPS = ("bm1684x",)


class Action(str, Enum):
    NOTHING = "nothing"
    APPLY = "apply"
    CHECK = "check"
    REFUSED = "refused"


@dataclass(frozen=True)
class Request:
    """What the operator asked for: a layout, whether it is explicit, and the threshold it must keep."""

    layout: Layout
    explicit: bool
    min_usable: int | None = None  # the variant's min_heap_mib, of npu + vpp
    variant: str | None = None

    def describe(self) -> str:
        if self.explicit:
            return f"explicit {self.layout}"
        return f"recommended {self.layout} for {self.variant} (npu+vpp >= {self.min_usable} MiB)"


@dataclass(frozen=True)
class BoxMemory:
    """What the planner needs to know about one box."""

    host: str
    now: Layout | None
    max: Layout | None
    chip: str | None = None
    kit_path: str | None = None
    boot_id: str | None = None
    problem: str | None = None  # why `now` is unknown


@dataclass(frozen=True)
class BoxPlan:
    host: str
    action: Action
    current: Layout | None
    target: Layout | None
    max: Layout | None
    reason: str

    @property
    def reboots(self) -> bool:
        """Whether apply may reboot this box (shown in the confirmation)."""
        return self.action in (Action.APPLY, Action.CHECK)


def request_for(manifest: Manifest, *, variant: str | None = None, layout: Layout | None = None) -> Request:
    """The request from `--variant` (default: the largest threshold) or explicit `--npu/--vpu/--vpp`."""
    if layout is not None:
        threshold = manifest.variant(variant).min_heap_mib if variant else None
        return Request(layout, explicit=True, min_usable=threshold, variant=variant)
    name = variant or manifest.by_preference[0].name
    return Request(
        manifest.recommended_layout,
        explicit=False,
        min_usable=manifest.variant(name).min_heap_mib,
        variant=name,
    )


def box_memory(host: str, facts: Facts) -> BoxMemory:
    """The planner's view of a box from its gathered facts."""
    problem = None
    if facts.heaps_now is None:
        heap_problems = [p for p in facts.problems if p.startswith("heaps")]
        problem = heap_problems[0] if heap_problems else "the heap sizes could not be read"
    return BoxMemory(
        host=host,
        now=facts.heaps_now,
        max=facts.heaps_max,
        chip=facts.chip,
        kit_path=facts.kit_path,
        boot_id=facts.boot_id,
        problem=problem,
    )


def effective_max(layout: Layout, maximum: Layout) -> Layout:
    """The box's max for this request: a heap below 1 MiB is deleted, and deleting vpu while keeping vpp
    makes memory_edit reserve 1 MiB at vpp's top ("vpu use vpp mem"), so vpp's max drops by 1 MiB
    (4096 -> 4095 on a 16 GB BM1684X, as Sophgo's memory_edit.sh v2.12 computes it)."""
    if layout.vpu < 1 and layout.vpp >= 1:
        return Layout(maximum.npu, maximum.vpu, maximum.vpp - 1)
    return maximum


def over_max(layout: Layout, maximum: Layout) -> list[str]:
    """`npu 7616 > max 7615` for every heap over its maximum (for this request, see `effective_max`)."""
    limit = effective_max(layout, maximum)
    problems = []
    for k in HEAPS:
        if getattr(layout, k) > getattr(limit, k):
            why = (
                f" (vpp max is {limit.vpp} when vpu is deleted)"
                if getattr(limit, k) != getattr(maximum, k)
                else ""
            )
            problems.append(f"{k} {getattr(layout, k)} > max {getattr(limit, k)}{why}")
    return problems


def plan_box(box: BoxMemory, request: Request) -> BoxPlan:
    """Decide what `memory apply` does on one box (see the module docstring)."""

    def plan(action: Action, target: Layout | None, reason: str) -> BoxPlan:
        return BoxPlan(box.host, action, box.now, target, box.max, reason)

    if box.chip is not None and box.chip.lower() not in SUPPORTED_CHIPS:
        return plan(Action.REFUSED, None, f"chip {box.chip} is not supported (only BM1684X)")
    if box.now is None:
        return plan(Action.REFUSED, None, f"current heaps unknown: {box.problem or 'not readable'}")
    if box.max is None:
        if box.now == request.layout:
            return plan(Action.NOTHING, request.layout, "already at the requested layout")
        assumed = _target(request, ASSUMED_MAX_16GB_BM1684X)
        if not request.explicit and box.now == assumed:
            return plan(
                Action.NOTHING,
                assumed,
                "at target (max of a 16 GB BM1684X assumed: no kit on the box)",
            )
        return plan(
            Action.CHECK,
            request.layout if request.explicit else assumed,
            "max unknown (no kit on the box yet): apply reads it there, then changes and reboots only "
            "if needed" + ("" if request.explicit else "; target shown for a 16 GB BM1684X"),
        )
    if request.explicit:
        too_big = over_max(request.layout, box.max)
        if too_big:
            return plan(Action.REFUSED, request.layout, "over the box's maximum: " + ", ".join(too_big))
        target = request.layout
    else:
        target = _target(request, box.max)
    if request.min_usable is not None and target.usable < request.min_usable:
        return plan(
            Action.REFUSED,
            target,
            f"{target} has {target.usable} MiB of npu+vpp, below the {request.min_usable} MiB "
            f"{request.variant} needs",
        )
    if box.now == target:
        return plan(Action.NOTHING, target, "already at target")
    clipped = "" if target == request.layout else f" (clipped to the box's max {box.max})"
    return plan(Action.APPLY, target, f"{box.now} -> {target}{clipped}; reboot")


def _target(request: Request, maximum: Layout) -> Layout:
    """The default target on a box with this max (the shared rule of `memory.plan_layout`)."""
    return plan_layout(request.layout, maximum, 0) or request.layout


def plan_fleet(boxes: Iterable[BoxMemory], request: Request) -> list[BoxPlan]:
    return [plan_box(box, request) for box in boxes]
