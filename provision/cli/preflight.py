"""`sophon-fleet preflight` and `sophon-fleet doctor HOST`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from provision.cli.completion import complete_hosts
from provision.cli.errors import Exit, reports_errors
from provision.cli.hosts import (
    connector_for,
    fleet_manifest,
    host_options,
    one_host,
    reach_from,
    resolve_inventory,
)
from provision.cli.options import json_option, model_option
from provision.cli.output import Output, plural, styled

if TYPE_CHECKING:  # the core modules (and paramiko) are imported when a command runs, not for --help
    from provision.facts.preflight import PreflightReport
    from provision.manifest import Manifest

EXIT_BY_RESULT = {"ready": Exit.OK, "not-ready": Exit.NOT_READY, "unreachable": Exit.UNREACHABLE}
STYLE = {
    "ready-int8": "green",  # by Status value
    "ready-int4": "green",
    "needs-memory-layout": "yellow",
    "blocked": "red",
    "error": "red",
    "unreachable": "magenta",
}


@click.command("preflight")
@host_options
@click.option(
    "--variant",
    metavar="auto|VARIANT",
    default="auto",
    show_default=True,
    help="Judge for this variant (auto: int8 if the heaps allow, else int4).",
)
@model_option
@click.option(
    "--fresh",
    is_flag=True,
    help="Ask every box everything again (sudo, heaps, bm_version, `import sophon.sail`) instead of "
    "replaying what it kept from earlier probes of this boot.",
)
@json_option
@click.pass_obj
@reports_errors
def preflight(out: Output, variant: str, model: str, fresh: bool, **kwargs: Any) -> None:
    """Is every box ready for the model? One SSH round trip per box, all boxes in parallel.

    Facts that only change with a reboot, a package, the boot image or the memory_edit kit (heaps,
    `memory_edit.sh -p`, bm_version, uname, the sail import) are kept on each box per boot and replayed;
    --fresh asks again (and so proves the sudo password works).

    Exit 0 when every box is ready, 3 when some are not (needs a memory layout, blocked, probe failed),
    4 when some are unreachable.

    \b
    Examples:
      sophon-fleet preflight -i /run/sophon-fleet-sim/inventory.yml
      sophon-fleet preflight -i hosts.ini --variant int8 --json
      sophon-fleet preflight -i hosts.ini --fresh
      sophon-fleet preflight -H linaro@192.168.150.1 -K --accept-new
    """
    from provision.facts.preflight import report_json, run_preflight

    reach = reach_from(kwargs)
    inv = resolve_inventory(reach)
    manifest = fleet_manifest(model, inv)
    manifest.check_variant(variant)
    with connector_for(reach, inv) as connector:
        report = run_preflight(
            inv.hosts,
            connector,
            manifest,
            variant=variant,
            file_sizes=lock_sizes(manifest),
            forks=reach.forks,
            fresh=fresh,
        )
    if out.json:
        out.emit_json(report_json(report))
    else:
        render(out, report)
    raise SystemExit(int(EXIT_BY_RESULT[report.worst]))


def render(out: Output, report: PreflightReport) -> None:
    from provision.facts.preflight import Status

    rows = []
    for v in report.verdicts:
        facts = v.facts
        now = facts.heaps_now if facts else None
        layout = (
            f"{v.suggestion.layout}{' (assumed max)' if v.suggestion.max_source == 'assumed' else ''}"
            if v.suggestion
            else "-"
        )
        reasons = "; ".join(r.message for r in v.reasons) or "-"
        rows.append(
            (
                v.host.name,
                styled(v.status.value, STYLE[v.status.value]),
                f"{now} (npu+vpp {now.usable})" if now else "-",
                layout,
                reasons + (f" (hint: {v.hint})" if v.hint else ""),
            )
        )
    out.table(f"preflight: {report.model}", ["host", "verdict", "heaps MiB", "suggested layout", "why"], rows)
    for message, hosts in grouped_warnings(report).items():
        out.text(f"warning ({', '.join(hosts)}): {message}")
    summary = ", ".join(f"{report.count(s)} {s.value}" for s in Status if report.count(s))
    out.info(f"{plural(len(report.verdicts), 'box')} in {report.seconds:.2f} s: {summary}")


def grouped_warnings(report: PreflightReport) -> dict[str, list[str]]:
    """Each distinct warning once, with the boxes it applies to."""
    grouped: dict[str, list[str]] = {}
    for verdict in report.verdicts:
        for warning in verdict.warnings:
            grouped.setdefault(warning.message, []).append(verdict.host.name)
    return grouped


def lock_sizes(manifest: Manifest) -> dict[str, int]:
    """Sizes pinned in the model's lock (`models/<model>.lock.yaml`), when there is one.

    Raises ConfigError (file, line, key) when the lock is malformed.
    """
    from provision.assets.pins import load_pins

    return {fid: entry.size for fid, entry in load_pins(manifest).entries.items()}


@click.command("doctor")
@click.argument("host", shell_complete=complete_hosts)
@host_options
@model_option
@json_option
@click.pass_obj
@reports_errors
def doctor(out: Output, host: str, model: str, **kwargs: Any) -> None:
    """Support block for one box: SoC/PCIe, bm_version, libsophon, driver, kernel, Python, sail, heaps, disk.

    HOST is a name from -i INVENTORY, or an ad-hoc [user@]host[:port].

    \b
    Examples:
      sophon-fleet doctor se7-1 -i /run/sophon-fleet-sim/inventory.yml
      sophon-fleet doctor linaro@192.168.150.1 -K --json
    """
    from provision.facts.doctor import doctor_json, support_block
    from provision.facts.parse import gather
    from provision.facts.preflight import judge

    reach = reach_from(kwargs)
    inv, target = one_host(reach, host)
    manifest = fleet_manifest(model, inv)
    with connector_for(reach, inv) as connector:
        facts = gather(connector.transport(target), fresh=True)
    verdict = judge(target, facts, manifest, file_sizes=lock_sizes(manifest))
    if out.json:
        out.emit_json(doctor_json(target, facts, verdict))
    else:
        out.text(support_block(target, facts, verdict))
