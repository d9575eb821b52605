"""`sophon-fleet bench`: first-token latency and tokens/s on every ready box, beside the published numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from provision.cli.errors import Exit, exit_with_worst, reports_errors
from provision.cli.hosts import connector_for, fleet_manifest, host_options, reach_from, resolve_inventory
from provision.cli.interrupt import interruptible
from provision.cli.options import json_option, model_option
from provision.cli.output import Output, fleet_json
from provision.fleet import FleetResult, run_fleet
from provision.inventory.hosts import Host
from provision.runtime.bench import SEED_PROMPT, BoxBench, bench_box, write_chart
from provision.runtime.bench_record import record_bench
from provision.settings import load_settings


@click.command("bench")
@host_options
@model_option
@click.option("--prompt", default=SEED_PROMPT, show_default=True, help="What to ask (the seed's prompt).")
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True, help="Answers per box.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None, help="Cap each answer.")
@click.option("--chart", type=click.Path(dir_okay=False, path_type=Path), help="Also write a PNG chart here.")
@json_option
@click.pass_obj
@reports_errors
def bench(
    out: Output,
    model: str,
    prompt: str,
    runs: int,
    max_new_tokens: int | None,
    chart: Path | None,
    **kwargs: Any,
) -> None:
    """Benchmark every ready box in parallel (one model per box): FTL and TPS, median/min/max.

    The published numbers are sophon-demo's (SE7-32, SDK V24.04.01): int8 1.181 s / 4.471 tok/s,
    int4 1.114 s / 7.489 tok/s. Boxes that are not ready are listed with what they need.

    \b
    Each box's result is kept in the tool's home (bench/<host>.json) and shown by `status`. Ctrl-C: no
    box starts its runtime or another run (the runs done are reported); Ctrl-C again aborts at once.

    \b
    Examples:
      sophon-fleet bench -i /run/sophon-fleet-sim/inventory.yml --runs 3
      sophon-fleet bench -i hosts.yml --json --chart fleet-bench.png
    """
    reach = reach_from(kwargs)
    settings = load_settings()
    inv = resolve_inventory(reach, settings)
    manifest = fleet_manifest(model, inv)
    done: dict[str, BoxBench] = {}

    def one(host: Host) -> BoxBench:
        b = bench_box(
            connector.transport(host),
            host.name,
            manifest,
            runs=runs,
            prompt=prompt,
            max_new_tokens=max_new_tokens,
            progress=lambda h, stage: out.info(f"{h}: {stage}"),
            cancel=cancel,
        )
        record_bench(settings.home, b)
        done[host.name] = b
        return b

    def known() -> None:  # a second Ctrl-C: the boxes that finished, the others as aborted
        render_rows(
            out, [(name, done.get(name), None if name in done else "aborted") for name in inv.names()], runs
        )

    with connector_for(reach, inv, settings) as connector, interruptible(out, on_abort=known) as cancel:
        result = run_fleet(inv.hosts, one, forks=reach.forks)
    benches = [o.value for o in result if o.value is not None]
    if chart and benches:
        write_chart(benches, chart)
        out.info(f"chart: {chart}")
    render(out, result, runs)
    if cancel.is_set():
        raise SystemExit(int(Exit.INTERRUPTED))
    exit_with_worst(o.error for o in result)


def render(out: Output, result: FleetResult[Host, BoxBench], runs: int) -> None:
    if out.json:
        out.emit_json(fleet_json(result))
        return
    render_rows(out, [(o.host.name, o.value, o.error.message if o.error else None) for o in result], runs)


def render_rows(out: Output, boxes: list[tuple[str, BoxBench | None, str | None]], runs: int) -> None:
    """One row per box: its numbers, or why it has none."""
    rows = []
    for name, b, error in boxes:
        if b is None:
            rows.append((name, "-", "-", "-", "-", error or ""))
            continue
        published = b.published
        rows.append(
            (
                name,
                b.variant,
                f"{b.ftl.median:.3f} ({b.ftl.min:.3f}–{b.ftl.max:.3f})",
                f"{b.tps.median:.2f} ({b.tps.min:.2f}–{b.tps.max:.2f})",
                f"{published[0]:.3f} s / {published[1]:.3f} tok/s" if published else "-",
                (
                    f"{len(b.runs)} of {runs} runs (interrupted)"
                    if len(b.runs) < runs
                    else f"{len(b.runs)} runs"
                )
                + (f", model loaded in {b.load_s:.2f} s" if b.load_s is not None else ""),
            )
        )
    out.table(
        "bench: first-token latency (s) and decode speed (tokens/s), median (min–max)",
        ["host", "variant", "FTL s", "TPS", "published SE7-32", "note"],
        rows,
    )
