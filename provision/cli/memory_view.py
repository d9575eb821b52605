"""How `memory plan / apply / rollback` show their work: plan and result tables, one JSON document, the
progress display, and the exit code from the worst outcome. Only rendering; no decisions about boxes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.live import Live
from rich.table import Table

from provision.cli.errors import Exit
from provision.cli.output import Output, styled
from provision.errors import ConnectError
from provision.fleet import FleetResult, SkippedError
from provision.inventory.hosts import Host
from provision.memory.apply import ApplyFailed, BoxResult, Stage
from provision.memory.bootimage import BootState
from provision.memory.layout import Layout, layout_json
from provision.memory.plan import Action, Request
from provision.memory.rollout import PlannedBox

ACTION_STYLE = {
    Action.NOTHING: "green",
    Action.APPLY: "yellow",
    Action.CHECK: "yellow",
    Action.REFUSED: "red",
}


def plan_exit(planned: list[PlannedBox]) -> Exit:
    if any(p.error is not None for p in planned):
        return Exit.UNREACHABLE if any(isinstance(p.error, ConnectError) for p in planned) else Exit.FAILED
    if any(p.plan and p.plan.action is Action.REFUSED for p in planned):
        return Exit.NOT_READY
    return Exit.OK


def plan_json(request: Request, planned: list[PlannedBox]) -> dict[str, Any]:
    return {
        "schema": "sophon-fleet/memory-plan/v1",
        "request": {
            "layout": layout_json(request.layout),
            "explicit": request.explicit,
            "variant": request.variant,
            "min_usable": request.min_usable,
        },
        "hosts": [
            {
                "host": p.host.name,
                "action": p.plan.action.value if p.plan else "error",
                "current": layout_json(p.plan.current) if p.plan else None,
                "target": layout_json(p.plan.target) if p.plan else None,
                "max": layout_json(p.plan.max) if p.plan else None,
                "reason": p.plan.reason if p.plan else (p.error.message if p.error else ""),
            }
            for p in planned
        ],
    }


def render_plan(out: Output, request: Request, planned: list[PlannedBox]) -> None:
    if out.json:
        out.emit_json(plan_json(request, planned))
        return
    rows = []
    for p in planned:
        if p.plan is None:
            rows.append(
                (p.host.name, styled("error", "magenta"), "-", "-", "-", p.error.message if p.error else "")
            )
            continue
        plan = p.plan
        rows.append(
            (
                plan.host,
                styled(plan.action.value, ACTION_STYLE[plan.action]),
                str(plan.current or "-"),
                str(plan.target or "-"),
                str(plan.max or "unknown"),
                plan.reason,
            )
        )
    out.table(
        f"memory plan: {request.describe()}",
        ["host", "action", "now MiB", "target", "max", "why"],
        rows,
        keep_whole=("host", "action", "now MiB", "target", "max"),
    )


@contextmanager
def stage_display(out: Output, hosts: list[str]) -> Iterator[Callable[[str, Stage, str], None]]:
    """Progress: on a terminal one live line per box with its current stage; otherwise (pipes, CI, tests)
    one log line per box and stage on stderr. Silent with --json and -q."""
    lock = threading.Lock()
    if not (out.err.is_terminal and not out.json and out.verbosity >= 0):

        def log(host: str, stage: Stage, detail: str) -> None:
            with lock:
                out.info(f"{host:<12} {stage.value:<9} {detail}".rstrip())

        yield log
        return
    state = {name: ("queued", "") for name in hosts}

    def table() -> Table:
        grid = Table.grid(padding=(0, 2))
        for name, (stage, detail) in state.items():
            grid.add_row(styled(name), styled(stage, "bold"), styled(detail))
        return grid

    with Live(table(), console=out.err, refresh_per_second=8) as live:

        def show(host: str, stage: Stage, detail: str) -> None:
            with lock:
                state[host] = (stage.value, detail)
                live.update(table())

        yield show


def results_exit(result: FleetResult[Host, BoxResult]) -> Exit:
    """Worst outcome first: interrupted 130, failed/rolled back/skipped 1, unreachable 4, refused 3."""
    errors = [o.error for o in result if o.error is not None]
    refused = [e for e in errors if isinstance(e, ApplyFailed) and e.refused]
    unreachable = [
        e for e in errors if isinstance(e, ConnectError) or (isinstance(e, ApplyFailed) and e.unreachable)
    ]
    if any(isinstance(e, ApplyFailed) and e.cancelled for e in errors):
        return Exit.INTERRUPTED
    if len(errors) > len(refused) + len(unreachable):
        return Exit.FAILED
    if unreachable:
        return Exit.UNREACHABLE
    return Exit.NOT_READY if refused else Exit.OK


def results_json(
    command: str, result: FleetResult[Host, BoxResult], plan: dict[str, Any] | None = None
) -> dict[str, Any]:
    planned = {h["host"]: h for h in plan["hosts"]} if plan else {}
    hosts = []
    for o in result:
        entry: dict[str, Any] = {"host": o.host.name, "seconds": round(o.seconds, 2)}
        if o.host.name in planned:
            entry["plan"] = {k: v for k, v in planned[o.host.name].items() if k != "host"}
        if o.value is not None:
            v = o.value
            entry.update(
                result=v.status.value,
                before=layout_json(v.before),
                after=layout_json(v.after),
                backup=v.backup.to_json() if v.backup else None,
                note=v.note,
            )
        elif isinstance(o.error, ApplyFailed):
            e = o.error
            entry.update(
                result="refused"
                if e.refused
                else ("interrupted" if e.cancelled else "unreachable" if e.unreachable else "failed"),
                stage=e.stage.value,
                image=e.image,
                error=e.message,
                hint=e.hint,
                backup=e.backup.to_json() if e.backup else None,
                recovery=list(e.recovery),
            )
        elif o.error is not None:
            kind = "skipped" if isinstance(o.error, SkippedError) else "unreachable"
            entry.update(result=kind if isinstance(o.error, SkippedError | ConnectError) else "failed")
            entry.update(error=o.error.message, hint=o.error.hint)
        hosts.append(entry)
    doc: dict[str, Any] = {"schema": f"sophon-fleet/{command.replace(' ', '-')}/v1", "hosts": hosts}
    if plan:
        doc["request"] = plan["request"]
    return doc


def render_results(
    out: Output, command: str, result: FleetResult[Host, BoxResult], plan: dict[str, Any] | None = None
) -> None:
    doc = results_json(command, result, plan)
    if out.json:
        out.emit_json(doc)
        return
    rows = [
        (
            h["host"],
            h["result"],
            _text(h.get("before") or h.get("plan", {}).get("current")),
            _text(h.get("after")),
            h.get("image") or ("new" if h["result"] in ("applied", "restored") else "-"),
            h.get("stage", "") if "error" in h else h.get("note", ""),
        )
        for h in doc["hosts"]
    ]
    out.table(
        command,
        ["host", "result", "before", "after", "boot image", "stage / note"],
        rows,
        keep_whole=("host", "result", "before", "after", "boot image"),
    )
    for h in doc["hosts"]:
        if h.get("error"):
            out.text(f"{h['host']}: {h['result']}: {h['error']}")
        if h.get("recovery"):
            out.text(f"{h['host']}: to recover:")
            for step in h["recovery"]:
                out.text(f"  - {step}")
        if h.get("hint"):
            out.text(f"{h['host']}: hint: {h['hint']}")


def _text(layout: dict[str, int] | None) -> str:
    return "/".join(str(layout[k]) for k in ("npu", "vpu", "vpp")) if layout else "-"


def backups_json(host: str, state: BootState) -> dict[str, Any]:
    """`layout`: decoded from each image's bytes (null with `layout_error` when it cannot be read);
    `recorded_layout`: what the records say (a verified boot, the backup's .json), a cross-check only."""
    disagree = state.disagreements()

    def image(sha: str | None) -> dict[str, Any]:
        recorded = state.recorded.get(sha or "")
        return {
            "layout_error": state.unreadable.get(sha or ""),
            "recorded_layout": _list(recorded),
            "records_disagree": (sha or "") in disagree,
        }

    backups = [
        {
            **b.to_json(),
            "layout": _list(state.label(b.sha256)),
            **image(b.sha256),
            "name": b.path.rsplit("/", 1)[-1],
            "factory": i == 0,
            "in_boot": b.sha256 == state.boot_sha,
            "booted": b.sha256 == state.booted_sha,
        }
        for i, b in enumerate(state.backups)
    ]
    return {
        "schema": "sophon-fleet/memory-backups/v1",
        "host": host,
        "boot": {
            "sha256": state.boot_sha,
            "layout": layout_json(state.label(state.boot_sha)),
            **image(state.boot_sha),
            "booted_sha256": state.booted_sha,
            "booted_layout": layout_json(state.booted_heaps),
            "pending": state.pending,
        },
        "backups": backups,
    }


def _list(layout: Layout | None) -> list[int] | None:
    return [layout.npu, layout.vpu, layout.vpp] if layout else None


def render_backups(out: Output, host: str, state: BootState) -> None:
    doc = backups_json(host, state)
    if out.json:
        out.emit_json(doc)
        return
    rows = [
        (
            b["name"],
            b["created"],
            _text(b["layout"]),
            b["sha256"][:16],
            ", ".join(
                w
                for w, on in (("factory", b["factory"]), ("in /boot", b["in_boot"]), ("booted", b["booted"]))
                if on
            ),
        )
        for b in doc["backups"]
    ]
    out.table(f"backups on {host}", ["backup", "created", "layout", "sha256", "note"], rows)
    out.text(f"{host}: {state.describe()}")
    for b in doc["backups"]:
        if b["layout_error"]:
            out.text(f"{host}: {b['name']}: layout unknown: {b['layout_error']}")
    for sha, (decoded, recorded) in state.disagreements().items():
        out.text(
            f"{host}: warning: image {sha[:16]} holds {decoded} but the records say {recorded} "
            "(the layout shown is the one in the image)"
        )
