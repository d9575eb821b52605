"""`sophon-fleet play PLAYBOOK`: run a fleet recipe, with a recap per box at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.text import Text

from provision.cli.errors import Exit, exit_with_worst, reports_errors
from provision.cli.hosts import connector_for, fleet_manifest, host_options, reach_from, resolve_inventory
from provision.cli.interrupt import interruptible
from provision.cli.options import json_option, model_option
from provision.cli.output import Output, plural, safe
from provision.play.playbook import check_variants, load_playbook
from provision.play.run import OUTCOMES, Play, PlayReport
from provision.settings import load_settings

COLOURS = {"ok": "green", "changed": "yellow", "skipped": "cyan", "failed": "red", "unreachable": "magenta"}


@click.command("play")
@click.argument("playbook", type=click.Path(dir_okay=False, path_type=Path))
@host_options
@model_option
@click.option("--dry-run", is_flag=True, help="Only read: preflight and plans; nothing is changed.")
@click.option(
    "--serial", help="Boxes per rolling batch for steps that reboot (N or N%); overrides the playbook."
)
@click.option(
    "--max-fail-percent", type=click.IntRange(0, 100), help="Stop when more boxes failed (overrides)."
)
@json_option
@click.pass_obj
@reports_errors
def play(
    out: Output,
    playbook: Path,
    model: str,
    dry_run: bool,
    serial: str | None,
    max_fail_percent: int | None,
    **kwargs: Any,
) -> None:
    """Run PLAYBOOK (YAML, checked before anything connects) over the inventory.

    Steps: preflight, memory, assets, deploy, bench, chat-check (see playbooks/ and the README). The recap
    counts ok / changed / skipped / failed / unreachable per box; the exit code is the worst outcome.

    \b
    Examples:
      sophon-fleet play playbooks/glm4-auto.yml -i /run/sophon-fleet-sim/inventory.yml
      sophon-fleet play playbooks/glm4-int4.yml -i hosts.yml --dry-run
      sophon-fleet play playbooks/glm4-int8.yml -i hosts.yml --serial 25% --max-fail-percent 10
    """
    book = load_playbook(playbook)  # schema errors: file:line:key, exit 2, nothing connects
    reach = reach_from(kwargs)
    settings = load_settings()
    inv = resolve_inventory(reach, settings)
    manifest = fleet_manifest(book.model or model, inv)
    check_variants(book, manifest)  # file:line: key, exit 2, nothing connects
    out.info(
        f"play {book.name or playbook.name}: {plural(len(book.steps), 'step')} "
        f"on {plural(len(inv.hosts), 'box')}" + (" (dry run)" if dry_run else "")
    )
    runs: list[Play] = []
    said: list[str] = []  # the progress lines, for the step that was running when a second Ctrl-C came

    def say(line: str) -> None:
        said.append(line)
        out.result(line)

    def known() -> (
        None
    ):  # a second Ctrl-C: the recap of the steps that finished, and the one that was running
        report = getattr(runs[0], "report", None) if runs else None
        if report is None:
            return
        report.aborted = "aborted by a second Ctrl-C" + next(
            (f" during {line.split(':')[0]}" for line in reversed(said) if line.startswith("step ")), ""
        )
        render(out, report)

    with connector_for(reach, inv, settings) as connector, interruptible(out, on_abort=known) as cancel:
        play_ = Play(
            book,
            list(inv.hosts),
            connector,
            manifest,
            settings,
            dry_run=dry_run,
            serial=serial,
            max_fail_percent=max_fail_percent,
            forks=reach.forks,
            say=say,
            cancel=cancel,
        )
        runs.append(play_)
        report = play_.run()
    render(out, report)
    if cancel.is_set():
        raise SystemExit(int(Exit.INTERRUPTED))
    exit_with_worst(report.errors)


def render(out: Output, report: PlayReport) -> None:
    recap = report.recap()
    if out.json:
        out.emit_json(
            {
                "playbook": report.playbook.file,
                "changed": report.changed,
                "aborted": report.aborted,
                "results": [
                    {"step": r.step, "host": r.host, "outcome": r.outcome, "message": r.message}
                    for r in report.results
                ],
                "recap": {host: {k: counts.get(k, 0) for k in OUTCOMES} for host, counts in recap.items()},
                "bench": [b.as_dict() for b in report.benches()],
            }
        )
        return
    benches = report.benches()
    if benches:
        out.table(
            "bench (median of runs)",
            ["host", "variant", "FTL s", "tokens/s", "published SE7-32"],
            [
                (
                    b.host,
                    b.variant,
                    f"{b.ftl.median:.3f}",
                    f"{b.tps.median:.2f}",
                    f"{b.published[0]} s / {b.published[1]} tok/s" if b.published else "-",
                )
                for b in benches
            ],
        )
    for result in report.results:
        if result.step == "chat-check" and isinstance(result.data, dict):
            out.text(f"{result.host}: {result.data['prompt']} → {result.data['answer'].strip()}")
    out.text("PLAY RECAP")
    for host, counts in recap.items():
        line = Text(f"{safe(host, multiline=False):<16} : ")
        for k in OUTCOMES:
            line.append(f"{k}={counts.get(k, 0)}", style=COLOURS[k]).append("  ")
        line.rstrip()
        out.console.print(line, highlight=False, soft_wrap=True)
    for result in report.results:  # every failed box: one line, its reason and what to do
        if result.error is not None:
            hint = f" (hint: {result.error.hint})" if result.error.hint else ""
            out.text(f"{result.host}: {result.outcome} at {result.step}: {result.error.message}{hint}")
    if report.aborted:
        out.text(report.aborted)
    if not report.changed and not report.errors:
        out.text("no changes: every box was already as the playbook wants it")
