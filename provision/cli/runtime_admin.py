"""`undeploy` and `logs`: remove runtime versions from boxes; read a box's runtime and service logs, or the
controller's own run log (`logs --last`)."""

from __future__ import annotations

from typing import Any

import click

from provision.cli.completion import complete_hosts
from provision.cli.errors import exit_with_worst, reports_errors
from provision.cli.hosts import connector_for, host_options, one_host, reach_from, resolve_inventory
from provision.cli.options import json_option
from provision.cli.output import Output, styled
from provision.cli.runlog import last_runs
from provision.fleet import run_fleet
from provision.runtime.logs import box_logs
from provision.runtime.undeploy import undeploy_box


@click.command("undeploy")
@host_options
@click.argument("version", required=False)
@click.option("--all", "everything", is_flag=True, help="Remove every runtime version and `current`.")
@json_option
@click.pass_obj
@reports_errors
def undeploy(out: Output, version: str | None, everything: bool, **kwargs: Any) -> None:
    """Remove runtime VERSION from the boxes (never the live one), or every version with --all.

    Exit 0 when done everywhere, 3 when a box does not have it or runs it, 4 when one is unreachable.

    \b
    Examples:
      sophon-fleet undeploy -i hosts.yml 0.1.0-3f2a9c1b7e
      sophon-fleet undeploy -i hosts.yml -l se7-2 --all
    """
    reach = reach_from(kwargs)
    inv = resolve_inventory(reach)
    with connector_for(reach, inv) as connector:
        result = run_fleet(
            inv.hosts, lambda h: undeploy_box(connector.transport(h), version, everything=everything)
        )
    if out.json:
        out.emit_json(
            {
                "hosts": [
                    {"ok": True, **o.value.as_dict()}
                    if o.value is not None
                    else {"host": o.host.name, "ok": False, "error": str(o.result), "hint": _hint(o.error)}
                    for o in result
                ]
            }
        )
    else:
        rows = []
        for o in result:
            if o.value is not None:
                removed = ", ".join(o.value.removed) or "nothing"
                rows.append(
                    (o.host.name, styled("removed", "green"), removed, ", ".join(o.value.left) or "-", "")
                )
            else:
                assert o.error is not None
                hint = f" (hint: {o.error.hint})" if o.error.hint else ""
                rows.append((o.host.name, styled("failed", "red"), "-", "-", o.error.message + hint))
        out.table("undeploy", ["host", "result", "removed", "left", "why"], rows)
    exit_with_worst(o.error for o in result)


def _hint(error: Any) -> str | None:
    return getattr(error, "hint", None)


@click.command("logs")
@click.argument("host", required=False, shell_complete=complete_hosts)
@host_options
@click.option(
    "-n", "--lines", type=click.IntRange(min=1), default=50, show_default=True, help="Lines per log."
)
@click.option(
    "--last",
    "last",
    type=click.IntRange(min=1),
    is_flag=False,
    flag_value=1,
    default=None,
    help="The controller's own log of its last run (or last N runs), from its home.",
)
@json_option
@click.pass_obj
@reports_errors
def logs(out: Output, host: str | None, lines: int, last: int | None, **kwargs: Any) -> None:
    """HOST's runtime and service logs (deploy history, the live runtime's selftest, the service's journal),
    or with --last the controller's own run log.

    \b
    Examples:
      sophon-fleet logs se7-1 -i hosts.yml
      sophon-fleet logs --last            # what the previous sophon-fleet command did, box by box
      sophon-fleet logs --last 3 --json
    """
    if last is not None:
        runs = last_runs(last)
        if out.json:
            out.emit_json({"runs": [{"file": str(p), "text": p.read_text(errors="replace")} for p in runs]})
            return
        if not runs:
            out.info("no run logged yet")
        for path in runs:
            out.info(f"== {path}")
            out.text(path.read_text(errors="replace").rstrip("\n"))
        return
    if host is None:
        raise click.UsageError("give HOST, or --last for the controller's own log")
    reach = reach_from(kwargs)
    inv, target = one_host(reach, host)
    with connector_for(reach, inv) as connector:
        sections = box_logs(connector.transport(target), lines)
    if out.json:
        out.emit_json({"host": target.name, "logs": sections})
        return
    for name, text in sections.items():
        out.info(f"== {target.name}: {name}")
        out.text(text.rstrip("\n") or "(empty)")
