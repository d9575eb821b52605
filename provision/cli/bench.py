"""`sophon-fleet bench`: first-token latency and tokens/s on every ready box, beside the published numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from provision.cli.errors import exit_with_worst, reports_errors
from provision.cli.hosts import connector_for, fleet_manifest, host_options, reach_from, resolve_inventory
from provision.cli.options import json_option, model_option
from provision.cli.output import Output, fleet_json
from provision.fleet import FleetResult, run_fleet
from provision.inventory.hosts import Host
from provision.runtime.bench import SEED_PROMPT, BoxBench, bench_box, write_chart


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
    Examples:
      sophon-fleet bench -i /run/sophon-fleet-sim/inventory.yml --runs 3
      sophon-fleet bench -i hosts.yml --json --chart fleet-bench.png
    """
    reach = reach_from(kwargs)
    inv = resolve_inventory(reach)
    manifest = fleet_manifest(model, inv)
    with connector_for(reach, inv) as connector:
        result = run_fleet(
            inv.hosts,
            lambda host: bench_box(
                connector.transport(host),
                host.name,
                manifest,
                runs=runs,
                prompt=prompt,
                max_new_tokens=max_new_tokens,
            ),
            forks=reach.forks,
        )
    benches = [o.value for o in result if o.value is not None]
    if chart and benches:
        write_chart(benches, chart)
        out.info(f"chart: {chart}")
    render(out, result)
    exit_with_worst(o.error for o in result)


def render(out: Output, result: FleetResult[Host, BoxBench]) -> None:
    if out.json:
        out.emit_json(fleet_json(result))
        return
    rows = []
    for o in result:
        if o.value is None:
            rows.append((o.host.name, "-", "-", "-", "-", f"{o.error.message if o.error else ''}"))
            continue
        b = o.value
        published = b.published
        rows.append(
            (
                o.host.name,
                b.variant,
                f"{b.ftl.median:.3f} ({b.ftl.min:.3f}–{b.ftl.max:.3f})",
                f"{b.tps.median:.2f} ({b.tps.min:.2f}–{b.tps.max:.2f})",
                f"{published[0]:.3f} s / {published[1]:.3f} tok/s" if published else "-",
                f"{len(b.runs)} runs, model loaded in {b.load_s:.2f} s" if b.load_s is not None else "",
            )
        )
    out.table(
        "bench: first-token latency (s) and decode speed (tokens/s), median (min–max)",
        ["host", "variant", "FTL s", "TPS", "published SE7-32", "note"],
        rows,
    )
