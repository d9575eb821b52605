"""`sophon-fleet status`: one table of the real fleet now (`--watch` refreshes it)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import click

from provision.cli.errors import exit_with_worst, reports_errors
from provision.cli.hosts import connector_for, host_options, reach_from, resolve_inventory
from provision.cli.options import json_option
from provision.cli.output import Output, styled
from provision.facts.status import BoxStatus, box_status, format_uptime
from provision.fleet import FleetResult, run_fleet
from provision.inventory.hosts import Host
from provision.runtime.bench_record import last_bench
from provision.settings import load_settings


@click.command("status")
@host_options
@click.option(
    "--watch",
    type=click.FloatRange(min=0.5),
    metavar="SECONDS",
    default=None,
    help="Refresh every SECONDS until Ctrl-C (with --json: one document per refresh).",
)
@json_option
@click.pass_obj
@reports_errors
def status(out: Output, watch: float | None, **kwargs: Any) -> None:
    """Each box now: reachable, uptime, heaps (size and in use), runtime version, variant, service.

    The last column is each box's last `bench` (variant, median FTL and tokens/s, when), kept in the
    tool's home (bench/<host>.json).

    Exit 0 when every box answered, 4 when some are unreachable.

    \b
    Examples:
      sophon-fleet status -i /run/sophon-fleet-sim/inventory.yml
      sophon-fleet status -i hosts.yml --watch 5
      sophon-fleet status -i hosts.yml --json | jq '.hosts[] | select(.reachable | not) | .host'
    """
    reach = reach_from(kwargs)
    settings = load_settings()
    inv = resolve_inventory(reach, settings)
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set()) if watch else None
    try:
        with connector_for(reach, inv, settings) as connector:
            while True:
                result = run_fleet(inv.hosts, lambda h: box_status(connector.transport(h)), forks=reach.forks)
                if watch and out.console.is_terminal and not out.json:
                    out.console.clear()
                render(out, result, settings.home)
                if not watch or stop.wait(watch):
                    break
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if watch:
        return  # --watch ends with Ctrl-C; that is not an error
    exit_with_worst(o.error for o in result)


def render(out: Output, result: FleetResult[Host, BoxStatus], home: Path) -> None:
    benches = {o.host.name: last_bench(home, o.host.name) for o in result}
    if out.json:
        out.emit_json(
            {
                "hosts": [
                    {
                        **(
                            o.value.as_dict()
                            if o.value is not None
                            else {
                                "host": o.host.name,
                                "reachable": not o.unreachable,
                                "error": o.error.message if o.error else None,
                                "hint": o.error.hint if o.error else None,
                            }
                        ),
                        "last_bench": b.as_dict() if (b := benches[o.host.name]) else None,
                    }
                    for o in result
                ]
            }
        )
        return
    rows = []
    for o in result:
        bench = b.short() if (b := benches[o.host.name]) else "-"
        if o.value is None:
            state = styled("unreachable", "red") if o.unreachable else styled("error", "magenta")
            rows.append((o.host.name, state, "-", "-", "-", "-", "-", "-", bench))
            continue
        s = o.value
        rows.append(
            (
                s.host,
                styled("up", "green"),
                format_uptime(s.uptime_s),
                str(s.heaps or "-"),
                str(s.in_use or "-"),
                s.runtime or "-",
                s.variant or "-",
                s.service or "-",
                bench,
            )
        )
    out.table(
        "fleet status",
        ["host", "state", "uptime", "heaps MiB", "in use MiB", "runtime", "variant", "service", "last bench"],
        rows,
        keep_whole=["last bench"],
    )
    for o in result:
        if o.error is not None:
            hint = f" (hint: {o.error.hint})" if o.error.hint else ""
            out.text(f"{o.host.name}: {o.error.message}{hint}")
