"""Everyday commands on many boxes: `exec -- CMD` and the verified `reboot` (both through run_fleet)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import click

from provision.cli.errors import Exit, exit_code_for, reports_errors
from provision.cli.hosts import connector_for, host_options, reach_from, resolve_inventory
from provision.cli.interrupt import interruptible
from provision.cli.options import json_option
from provision.cli.output import Output, plural, styled
from provision.errors import ConfigError, FleetError
from provision.fleet import FleetResult, run_fleet
from provision.inventory.hosts import Host
from provision.memory.reboot import DEFAULT_REBOOT_TIMEOUT, Rebooted, RebootPolicy, reboot_box
from provision.ssh.transport import Result


@dataclass(frozen=True)
class Ran:
    """One box's run of the ad-hoc command."""

    result: Result

    def as_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "exit_code": r.exit_code,
            "stdout": r.stdout,
            "stderr": r.stderr,
            "seconds": round(r.seconds, 3),
        }


@click.command("exec", context_settings={"ignore_unknown_options": True})
@host_options
@click.option("-b", "--become", is_flag=True, help="Run it as root (sudo; the password is checked first).")
@click.option(
    "--timeout", type=click.FloatRange(min=1), default=120.0, show_default=True, help="Seconds per box."
)
@json_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
@reports_errors
def exec_command(out: Output, command: tuple[str, ...], become: bool, timeout: float, **kwargs: Any) -> None:
    """Run COMMAND on every box: each box's output, then a recap.

    One word is shell code as it is (`'df -h | grep data'`); several words are quoted one by one.

    Exit 0 when it exited 0 everywhere, 1 when it failed somewhere, 4 when a box is unreachable.

    \b
    Examples:
      sophon-fleet exec -i hosts.yml -- uptime
      sophon-fleet exec -i hosts.yml -l se7-1 -b -- cat /sys/kernel/debug/ion/bm_npu_heap_dump/total_mem
      sophon-fleet exec -i hosts.yml --json -- 'df -h /data' | jq '.hosts[].stdout'
    """
    reach = reach_from(kwargs)
    inv = resolve_inventory(reach)
    line = command[0] if len(command) == 1 else list(command)
    with connector_for(reach, inv) as connector:

        def one(host: Host) -> Ran:
            return Ran(connector.transport(host).run(line, sudo=become, timeout=timeout, check=False))

        result = run_fleet(inv.hosts, one, forks=reach.forks)
    render_exec(out, result)
    codes = [exit_code_for(o.error) for o in result if o.error is not None]
    if any(o.value is not None and o.value.result.exit_code != 0 for o in result):
        codes.append(Exit.FAILED)
    if codes:
        raise SystemExit(int(max(codes)))


def render_exec(out: Output, result: FleetResult[Host, Ran]) -> None:
    if out.json:
        out.emit_json({"hosts": [_exec_json(o) for o in result]})
        return
    for o in result:
        if o.value is None:
            continue
        for stream, text in (("out", o.value.result.stdout), ("err", o.value.result.stderr)):
            for text_line in text.splitlines():
                out.text(
                    f"{o.host.name} | {text_line}" if stream == "out" else f"{o.host.name} ! {text_line}"
                )
    rows = []
    for o in result:
        if o.value is not None:
            code = o.value.result.exit_code
            rows.append(
                (
                    o.host.name,
                    styled("ok" if code == 0 else "failed", "green" if code == 0 else "red"),
                    str(code),
                    f"{o.value.result.seconds:.2f} s",
                    "",
                )
            )
        else:
            assert o.error is not None
            hint = f" (hint: {o.error.hint})" if o.error.hint else ""
            state = "unreachable" if o.unreachable else "failed"
            rows.append((o.host.name, styled(state, "red"), "-", "-", o.error.message + hint))
    out.table("exec recap", ["host", "result", "exit", "time", "why"], rows)


def _exec_json(o: Any) -> dict[str, Any]:
    if o.value is not None:
        return {"host": o.host.name, "ok": o.value.result.exit_code == 0, **o.value.as_dict()}
    return {"host": o.host.name, "ok": False, "error": o.error.message, "hint": o.error.hint}


@click.command("reboot")
@host_options
@click.option("-y", "--yes", is_flag=True, help="Do not ask before rebooting.")
@click.option(
    "--reboot-timeout",
    type=click.FloatRange(min=1),
    default=DEFAULT_REBOOT_TIMEOUT,
    show_default=True,
    help="Seconds per reboot.",
)
@json_option
@click.pass_obj
@reports_errors
def reboot_command(out: Output, yes: bool, reboot_timeout: float, **kwargs: Any) -> None:
    """Reboot the boxes and wait until each runs a new boot (new boot_id) and answers again.

    The sudo password is checked on every box before any box reboots.

    Exit 0 when every box came back, 1 when one did not in time, 4 when one is unreachable, 130 on Ctrl-C.

    \b
    Examples:
      sophon-fleet reboot -i hosts.yml -l se7-1 --yes
      sophon-fleet reboot -i hosts.yml --forks 1 --yes --json
    """
    reach = reach_from(kwargs)
    inv = resolve_inventory(reach)
    names = ", ".join(h.name for h in inv.hosts)
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError(
                f"{plural(len(inv.hosts), 'box')} would be rebooted ({names})",
                key="--yes",
                hint="confirm with --yes",
            )
        if not click.confirm(f"Reboot {plural(len(inv.hosts), 'box')}: {names}?", err=True):
            raise SystemExit(int(Exit.USAGE))
    policy = RebootPolicy(timeout=reboot_timeout)
    first = "interrupt: boxes not yet rebooting are left alone; Ctrl-C again to abort now"
    with connector_for(reach, inv) as connector, interruptible(out, first) as cancel:
        checked = run_fleet(inv.hosts, lambda h: connector.transport(h).check_sudo(), forks=reach.forks)
        refused = {o.host.name: o.error for o in checked if o.error is not None}
        ready = [h for h in inv.hosts if h.name not in refused]
        rebooted = run_fleet(
            ready if not refused else [],
            lambda h: reboot_box(connector.transport(h), policy, cancel=cancel),
            forks=reach.forks,
        )
    outcomes: dict[str, Rebooted | FleetError] = {o.host.name: o.result for o in rebooted}
    for name, error in refused.items():
        outcomes[name] = error
    for host in inv.hosts:  # a refused password anywhere: no box is rebooted
        outcomes.setdefault(
            host.name, FleetError(f"{host.name}: not rebooted: sudo was refused on another box")
        )
    render_reboot(out, inv.hosts, outcomes)
    if cancel.is_set():
        raise SystemExit(int(Exit.INTERRUPTED))
    errors = [e for e in outcomes.values() if isinstance(e, FleetError)]
    if errors:
        raise SystemExit(int(max(exit_code_for(e) for e in errors)))


def render_reboot(out: Output, hosts: tuple[Host, ...], outcomes: dict[str, Rebooted | FleetError]) -> None:
    if out.json:
        out.emit_json(
            {
                "hosts": [
                    {"ok": True, **r.as_dict()}
                    if isinstance(r := outcomes[h.name], Rebooted)
                    else {"host": h.name, "ok": False, "error": r.message, "hint": r.hint}
                    for h in hosts
                ]
            }
        )
        return
    rows = []
    for h in hosts:
        r = outcomes[h.name]
        if isinstance(r, Rebooted):
            rows.append((h.name, styled("rebooted", "green"), r.new_boot_id, f"{r.seconds:.1f} s", ""))
        else:
            hint = f" (hint: {r.hint})" if r.hint else ""
            rows.append((h.name, styled("failed", "red"), "-", "-", r.message + hint))
    out.table("reboot", ["host", "result", "new boot_id", "time", "why"], rows)
