"""`sophon-fleet memory plan | apply | rollback`: TPU memory layouts (npu/vpu/vpp ion heaps)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from provision.cli.completion import complete_hosts
from provision.cli.errors import Exit, reports_errors
from provision.cli.hosts import (
    Reach,
    connector_for,
    fleet_manifest,
    host_options,
    one_host,
    reach_from,
    resolve_inventory,
)
from provision.cli.interrupt import interruptible
from provision.cli.memory_view import (
    plan_exit,
    plan_json,
    render_backups,
    render_plan,
    render_results,
    results_exit,
    stage_display,
)
from provision.cli.options import json_option, model_option
from provision.cli.output import Output, plural
from provision.errors import ConfigError
from provision.fleet import run_fleet
from provision.inventory.hosts import Inventory
from provision.memory.apply import ApplyOptions, backups_of, rollback_box
from provision.memory.kit import resolve_kit, shared_kit
from provision.memory.layout import Layout
from provision.memory.plan import Action, BoxPlan, Request, request_for
from provision.memory.reboot import DEFAULT_REBOOT_TIMEOUT, RebootPolicy
from provision.memory.rollout import PlannedBox, apply_fleet, plan_fleet
from provision.settings import load_settings


@click.group("memory")
def memory() -> None:
    """TPU memory layouts: plan, apply (memory_edit + verified boot image swap + reboot), roll back.

    \b
    Examples:
      sophon-fleet memory plan -i /run/sophon-fleet-sim/inventory.yml
      sophon-fleet memory apply -i hosts.yml --kit memory_edit_v2.12.tar.xz --serial 1 --max-fail-percent 0
      sophon-fleet memory rollback se7-2 -i hosts.yml
    """


def layout_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options: list[Callable[[Any], Any]] = [
        click.option(
            "--variant",
            metavar="VARIANT",
            help="Target the manifest's recommended layout for this variant (default int8's threshold).",
        ),
        click.option("--npu", type=click.IntRange(min=0), help="Explicit npu heap, MiB (with --vpu, --vpp)."),
        click.option("--vpu", type=click.IntRange(min=0), help="Explicit vpu heap, MiB."),
        click.option("--vpp", type=click.IntRange(min=0), help="Explicit vpp heap, MiB."),
        model_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def reboot_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--reboot-timeout and --break-lock, shared by `apply` and `rollback`."""
    func = click.option(
        "--break-lock", is_flag=True, help="Remove a lock left on the boxes by a killed run first."
    )(func)
    return click.option(
        "--reboot-timeout",
        type=click.FloatRange(min=1),
        default=DEFAULT_REBOOT_TIMEOUT,
        show_default=True,
        help="Seconds per reboot.",
    )(func)


def request_from(kwargs: dict[str, Any], inv: Inventory) -> Request:
    manifest = fleet_manifest(kwargs.pop("model"), inv)
    sizes = [kwargs.pop(k) for k in ("npu", "vpu", "vpp")]
    variant = kwargs.pop("variant")
    if any(s is not None for s in sizes) and not all(s is not None for s in sizes):
        raise ConfigError("give all three of --npu, --vpu and --vpp (MiB), or none", key="--npu")
    layout = Layout(*sizes) if all(s is not None for s in sizes) else None
    return request_for(manifest, variant=variant, layout=layout)


@memory.command("plan")
@host_options
@layout_options
@json_option
@click.pass_obj
@reports_errors
def plan_command(out: Output, **kwargs: Any) -> None:
    """Per box: current layout, target, and what `memory apply` would do (nothing / apply + reboot / check /
    refused and why). Changes nothing.

    Exit 0 when every box can reach its target, 3 when some are refused, 4 when some are unreachable.
    """
    reach = reach_from(kwargs)
    inv = resolve_inventory(reach)
    request = request_from(kwargs, inv)
    with connector_for(reach, inv) as connector:
        planned = plan_fleet(inv.hosts, connector.transport, request, reach.forks)
    render_plan(out, request, planned)
    raise SystemExit(int(plan_exit(planned)))


# ---------------------------------------------------------------------------------------------- apply


@memory.command("apply")
@host_options
@layout_options
@click.option(
    "--kit", metavar="FILE|URL", help="memory_edit kit (default: the box's own, else the manifest's)."
)
@click.option("--serial", metavar="N|N%", help="Rolling: change this many boxes at a time.")
@click.option(
    "--max-fail-percent", type=click.FloatRange(min=0, max=100), help="Stop starting batches past this."
)
@click.option("-y", "--yes", is_flag=True, help="Do not ask before rebooting boxes.")
@click.option("--dry-run", is_flag=True, help="Only show the plan (same as `memory plan`).")
@click.option(
    "--auto-rollback/--no-auto-rollback",
    default=True,
    show_default=True,
    help="Restore the old image when a box boots with the wrong layout.",
)
@reboot_options
@json_option
@click.pass_obj
@reports_errors
def apply_command(
    out: Output,
    kit: str | None,
    serial: str | None,
    max_fail_percent: float | None,
    yes: bool,
    dry_run: bool,
    auto_rollback: bool,
    reboot_timeout: float,
    break_lock: bool,
    **kwargs: Any,
) -> None:
    """Bring every box to its planned layout: memory_edit -c, verified backup, atomic boot image swap,
    reboot, verify; a box that boots with the wrong layout is rolled back.

    Exit 0 when every box is at its target, 1 when a box failed or was rolled back (or skipped by
    --max-fail-percent), 3 when some were refused, 4 when some are unreachable, 130 when interrupted.
    """
    reach = reach_from(kwargs)
    manifest_name = kwargs["model"]
    inv = resolve_inventory(reach)
    request = request_from(kwargs, inv)
    settings = load_settings()
    manifest = fleet_manifest(manifest_name, inv)
    local_kit = resolve_kit(kit, manifest, settings) if kit else None
    with connector_for(reach, inv) as connector:
        planned = plan_fleet(inv.hosts, connector.transport, request, reach.forks)
        if dry_run or not out.json:
            render_plan(out, request, planned)
        if dry_run:
            raise SystemExit(int(plan_exit(planned)))
        confirm_reboots(out, planned, yes)
        options = ApplyOptions(
            kit=local_kit,
            kit_resolver=shared_kit(manifest, settings),
            auto_rollback=auto_rollback,
            reboot=RebootPolicy(timeout=reboot_timeout),
            break_lock=break_lock,
            reach_args=reach_args(reach),
            apply_args=apply_args(request, kit, manifest.source),
        )
        with interruptible(out) as cancel, stage_display(out, inv.names()) as progress:
            result = apply_fleet(
                planned,
                connector.transport,
                request,
                options,
                forks=reach.forks,
                serial=serial,
                max_fail_percent=max_fail_percent,
                progress=progress,
                cancel=cancel,
            )
    render_results(out, "memory apply", result, plan=plan_json(request, planned))
    raise SystemExit(int(results_exit(result)))


def reach_args(reach: Reach) -> tuple[str, ...]:
    """The host options that reach these boxes again (for recovery commands printed to the operator)."""
    words = [w for path in reach.inventories for w in ("-i", path)]
    words += [w for spec in reach.adhoc for w in ("-H", spec)]
    return (*words, "--connect-timeout", f"{reach.connect_timeout:g}")


def apply_args(request: Request, kit: str | None, model: str | None) -> tuple[str, ...]:
    """What `memory apply` was asked for, as options (for the same recovery commands)."""
    words = (["-m", model] if model else []) + (["--kit", kit] if kit else [])
    if request.explicit:
        layout = request.layout
        words += ["--npu", str(layout.npu), "--vpu", str(layout.vpu), "--vpp", str(layout.vpp)]
    if request.variant:
        words += ["--variant", request.variant]
    return (*words, "--yes")


def confirm_reboots(out: Output, planned: list[PlannedBox], yes: bool) -> None:
    rebooting = [p.host.name for p in planned if p.plan is not None and p.plan.reboots]
    if not rebooting or yes:
        return
    names = ", ".join(rebooting)
    if not sys.stdin.isatty():
        raise ConfigError(
            f"{plural(len(rebooting), 'box')} would be rebooted ({names})",
            key="--yes",
            hint="confirm with --yes",
        )
    if not click.confirm(
        f"Change the layout of and reboot {plural(len(rebooting), 'box')}: {names}?", err=True
    ):
        raise SystemExit(int(Exit.FAILED))


# ---------------------------------------------------------------------------------------------- rollback


@memory.command("rollback")
@click.argument("host", shell_complete=complete_hosts)
@host_options
@click.option("-y", "--yes", is_flag=True, help="Do not ask before rebooting the box.")
@click.option(
    "--to",
    "to",
    metavar="BACKUP|factory",
    help="Which backup: its name or time stamp (see `memory backups`), or `factory` (the first one made).",
)
@reboot_options
@json_option
@click.pass_obj
@reports_errors
def rollback_command(
    out: Output, host: str, yes: bool, to: str | None, reboot_timeout: float, break_lock: bool, **kwargs: Any
) -> None:
    """Restore a boot image backup `memory apply` made on HOST (the newest, or --to; sha256 verified),
    reboot, verify.

    \b
    Examples:
      sophon-fleet memory rollback se7-1 -i hosts.yml
      sophon-fleet memory rollback se7-1 -i hosts.yml --to factory
      sophon-fleet memory rollback se7-1 -i hosts.yml --to 20260101T120000Z

    Exit 0 when the box runs the restored layout, 1 otherwise, 4 when it cannot be reached.
    """
    reach = reach_from(kwargs)
    inv, target = one_host(reach, host)
    if not yes:
        planned = [PlannedBox(target, None, BoxPlan(host, Action.APPLY, None, None, None, ""), None)]
        confirm_reboots(out, planned, yes)
    options = ApplyOptions(
        reboot=RebootPolicy(timeout=reboot_timeout),
        break_lock=break_lock,
        reach_args=reach_args(reach),
        rollback_to=to,
    )
    with (
        connector_for(reach, inv) as connector,
        interruptible(out) as cancel,
        stage_display(out, [target.name]) as progress,
    ):
        result = run_fleet(
            [target],
            lambda h: rollback_box(connector.transport(h), options, progress=progress, cancel=cancel),
        )
    render_results(out, "memory rollback", result)
    raise SystemExit(int(results_exit(result)))


@memory.command("backups")
@click.argument("host")
@host_options
@json_option
@click.pass_obj
@reports_errors
def backups_command(out: Output, host: str, **kwargs: Any) -> None:
    """List the boot image backups on HOST (sha256, layout, date; the first is the factory image), with
    what /boot holds now and what the box booted with. Changes nothing.

    \b
    Examples:
      sophon-fleet memory backups se7-1 -i hosts.yml
      sophon-fleet memory backups se7-1 -i hosts.yml --json
    """
    reach = reach_from(kwargs)
    inv = resolve_inventory(Reach(**{**reach.__dict__, "limit": host}))
    with connector_for(reach, inv) as connector:
        state = backups_of(connector.transport(inv.hosts[0]))
    render_backups(out, inv.hosts[0].name, state)
