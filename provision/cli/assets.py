"""`sophon-fleet assets ...`: model manifests, the cache, the lock, downloads (and pushes to boxes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from provision.assets.cache import Cache
from provision.assets.distribute import push_to_hosts
from provision.assets.download import ProgressEvent, pin, pull, verify
from provision.assets.pins import load_pins
from provision.assets.push import DEFAULT_ROOT, BoxPush, PushEvent
from provision.cli.errors import Exit, exit_code_for, reports_errors
from provision.cli.hosts import connector_for, host_options, reach_from, resolve_inventory
from provision.cli.interrupt import interruptible
from provision.cli.options import json_option, model_name, model_option
from provision.cli.output import Output, plural, safe, styled
from provision.cli.progress import progress_bars
from provision.errors import FleetError
from provision.inventory.sources import fleet_model
from provision.manifest import Manifest, load_manifest
from provision.settings import load_settings

EPILOG = """\b
Examples:
  sophon-fleet assets pull --variant int4              # into the cache, verified, pinned in the lock
  sophon-fleet assets pull --mirror http://10.0.0.5:8080 --variant all
  sophon-fleet assets verify                           # re-hash the cache against the lock
  sophon-fleet assets ls
  sophon-fleet assets pin --variant all                # write sizes + sha256 into the pins file
  sophon-fleet assets push -i inventory.yml            # each box its variant (from preflight), verified
  sophon-fleet assets push -i inventory.yml --from-mirror http://10.0.0.5:8080/   # boxes fetch themselves
"""


@click.group(epilog=EPILOG)
def assets() -> None:
    """Model files: download into a verified cache, pin them in a lock, distribute them to boxes."""


def model_options(func):
    func = model_option(func)
    func = click.option(
        "--cache-dir",
        type=click.Path(path_type=Path, file_okay=False),
        help="Cache directory (default: SOPHON_FLEET_CACHE or $XDG_CACHE_HOME/sophon-fleet).",
    )(func)
    func = click.option(
        "--pins",
        type=click.Path(path_type=Path, dir_okay=False),
        help="The pins file (sizes + sha256) to check and update; default: one per manifest in the tool's "
        "home (SOPHON_FLEET_HOME/pins/).",
    )(func)
    return func


def variant_option(default: str):
    return click.option(
        "--variant",
        default=default,
        show_default=True,
        help="A variant of the manifest (int4, int8, ...) or `all`.",
    )


def fleet_models_option(func):
    """`-i INVENTORY` on the cache commands: only for the manifest directory the inventory names."""
    return click.option(
        "-i",
        "--inventory",
        "inventories",
        multiple=True,
        metavar="FILE",
        help="An inventory whose `models:` names the manifest directory (e.g. the simulated fleet's).",
    )(func)


def _variants(manifest: Manifest, name: str) -> list[str]:
    if name == "all":
        return list(manifest.variants)
    manifest.variant(name)  # ConfigError listing the known ones
    return [name]


def _setup(model: str, cache_dir: Path | None, pins: Path | None, inventories: tuple[str, ...] = ()):
    settings = load_settings()
    named = [fleet_model(Path(path)) for path in inventories or settings.inventories]
    models = tuple(d for dirs, _ in named for d in dirs)
    manifest = load_manifest(model_name(model, next((m for _, m in named if m), None)), models)
    return settings, manifest, load_pins(manifest, pins), Cache(cache_dir or settings.cache_dir)


@assets.command("pull", epilog=EPILOG)
@model_options
@fleet_models_option
@variant_option("int4")
@click.option("--mirror", "mirrors", multiple=True, help="Mirror base URL (repeatable), tried first.")
@click.option("--no-dfss", is_flag=True, help="Do not fall back to the vendor's dfss SFTP servers.")
@click.option("--parallel", default=4, show_default=True, type=click.IntRange(1, 32), help="Files at once.")
@click.option(
    "--keep-corrupt", is_flag=True, help="Keep downloads that fail verification in <cache>/corrupt/."
)
@click.option(
    "--sftp-identity",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    hidden=True,
    help="Private key for a private dfss-style SFTP mirror (the public servers use a password).",
)
@json_option
@click.pass_obj
@reports_errors
def pull_cmd(
    out: Output,
    model,
    inventories,
    cache_dir,
    pins,
    variant,
    mirrors,
    no_dfss,
    parallel,
    keep_corrupt,
    sftp_identity,
):
    """Download the files of a variant into the cache: resumable, verified, in parallel."""
    settings, manifest, lock, cache = _setup(model, cache_dir, pins, inventories)
    failures: list[FleetError] = []
    with progress_bars(out) as bar:

        def on_progress(event: ProgressEvent) -> None:
            bar(manifest.files[event.file_id].path, event.phase, event.done, event.total)

        report = pull(
            manifest,
            _variants(manifest, variant),
            cache=cache,
            lock=lock,
            mirrors=(*mirrors, *settings.mirrors),
            known_hosts=settings.home / "dfss_known_hosts",
            sftp_identity=sftp_identity,
            use_dfss=not no_dfss,
            parallel=parallel,
            keep_corrupt=keep_corrupt,
            progress=on_progress,
            failures=failures,
        )
    if failures:  # one line per file that failed, then each distinct hint once; the worst exit code
        if out.json:
            out.emit_json(
                {
                    "model": manifest.model,
                    "files": [f.path for f in report.files],
                    "errors": [{"error": e.message, "hint": e.hint} for e in failures],
                }
            )
        for e in failures:
            out.err.print(styled(f"error: {e.message}", "red"), highlight=False, soft_wrap=True)
        for hint in dict.fromkeys(e.hint for e in failures if e.hint):
            out.err.print(f"hint: {safe(hint)}", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(int(max(exit_code_for(e) for e in failures)))
    rows: list[dict[str, Any]] = [
        {
            "file": f.path,
            "status": f.status,
            "size": f.size,
            "sha256": f.sha256,
            "source": f.source,
            "transferred": f.transferred,
            "resumed_from": f.resumed_from,
            "set_aside": list(f.set_aside),
        }
        for f in report.files
    ]
    if out.json:
        out.emit_json(
            {"model": manifest.model, "cache": str(cache.root), "lock": str(lock.path), "files": rows}
        )
        return
    out.table(
        f"{manifest.model} in {cache.root}",
        ["file", "status", "size", "sha256", "source"],
        [[r["file"], r["status"], _mib(r["size"]), r["sha256"][:16], r["source"] or "-"] for r in rows],
    )
    if report.lock_updated:
        out.info(f"pinned new files in {lock.path}")


@assets.command("verify")
@model_options
@fleet_models_option
@variant_option("all")
@json_option
@click.pass_obj
@reports_errors
def verify_cmd(out: Output, model, inventories, cache_dir, pins, variant):
    """Re-hash the cached files and compare them with their names and the lock (exit 5 on a mismatch)."""
    settings, manifest, lock, cache = _setup(model, cache_dir, pins, inventories)
    with progress_bars(out) as bar:
        results = verify(
            manifest,
            _variants(manifest, variant),
            cache=cache,
            lock=lock,
            mirrors=settings.mirrors,
            progress=lambda e: bar(manifest.files[e.file_id].path, e.phase, e.done, e.total),
        )
    if out.json:
        out.emit_json(
            {"model": manifest.model, "cache": str(cache.root), "files": [r.__dict__ for r in results]}
        )
    else:
        out.table(
            f"{manifest.model} in {cache.root}",
            ["file", "status", "size", "sha256", "detail"],
            [[r.path, r.status, _mib(r.size), (r.sha256 or "-")[:16], r.detail] for r in results],
        )
    if any(r.status == "corrupt" for r in results):
        out.err.print(
            "hint: `sophon-fleet assets pull` downloads the corrupt files again "
            "(a file that differs from its pin: check the lock, or pin it anew with `assets pin`)",
            markup=False,
        )
        raise SystemExit(int(Exit.INTEGRITY))
    if any(r.status == "missing" for r in results):
        raise SystemExit(int(Exit.FAILED))


@assets.command("ls")
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), help="Cache directory.")
@json_option
@click.pass_obj
@reports_errors
def ls_cmd(out: Output, cache_dir):
    """What the cache holds: blobs by sha256, the model files naming them, partial downloads."""
    cache = Cache(cache_dir or load_settings().cache_dir)
    entries, partials = cache.entries(), cache.partials()
    if out.json:
        out.emit_json(
            {
                "cache": str(cache.root),
                "blobs": [{"sha256": e.sha256, "size": e.size, "names": list(e.names)} for e in entries],
                "partial": [{"name": n, "size": s} for n, s in partials],
            }
        )
        return
    rows = [[", ".join(e.names) or "(unreferenced)", _mib(e.size), e.sha256[:16]] for e in entries]
    rows += [[f"{name} (partial)", _mib(size), "-"] for name, size in partials]
    out.table(f"cache {cache.root}", ["files", "size", "sha256"], rows)


@assets.command("pin")
@model_options
@fleet_models_option
@variant_option("all")
@json_option
@click.pass_obj
@reports_errors
def pin_cmd(out: Output, model, inventories, cache_dir, pins, variant):
    """Write size and sha256 of the cached files into the pins file (see --pins)."""
    settings, manifest, lock, cache = _setup(model, cache_dir, pins, inventories)
    changed = pin(manifest, _variants(manifest, variant), cache=cache, lock=lock, mirrors=settings.mirrors)
    if out.json:
        out.emit_json({"lock": str(lock.path), "pinned": changed})
    else:
        out.text(f"{lock.path}: " + (f"pinned {', '.join(changed)}" if changed else "already up to date"))


def _mib(size: int | None) -> str:
    if size is None:
        return "-"
    if size < 2**20:
        return f"{size / 2**10:.1f} KiB"
    return f"{size / 2**20:.1f} MiB" if size < 2**30 else f"{size / 2**30:.2f} GiB"


@assets.command("push", epilog=EPILOG)
@host_options
@model_options
@click.option(
    "--variant",
    default="auto",
    show_default=True,
    help="auto (what each box's preflight verdict allows, or its inventory `variant`), or int4 / int8.",
)
@click.option("--from-mirror", "mirror", metavar="URL", help="Boxes fetch from this mirror themselves.")
@click.option(
    "--max-parallel", type=click.IntRange(min=1), help="Boxes pushed to at once (default: --forks)."
)
@click.option("--reverify", is_flag=True, help="Hash files already verified on a box again.")
@click.option("--dry-run", is_flag=True, help="Probe the boxes and show what would be sent; send nothing.")
@click.option("--dest-root", default=DEFAULT_ROOT, show_default=True, help="Where models live on a box.")
@json_option
@click.pass_obj
@reports_errors
def push_cmd(
    out: Output, model, cache_dir, pins, variant, mirror, max_parallel, reverify, dry_run, dest_root, **kwargs
):
    """Distribute the model to boxes: resumable, verified on the box against the lock, skips what is there.

    Exit 0 when every box holds its verified variant; otherwise the worst per-box outcome (3 not ready,
    4 unreachable, 5 a sha256 mismatch, 6 a box's disk is full, 1 other failures).
    """
    reach = reach_from(kwargs)
    inventory = resolve_inventory(reach)
    settings, manifest, lock, cache = _setup(model, cache_dir, pins, reach.inventories)
    boxes = plural(len(inventory.hosts), "box")
    first = f"interrupt: finishing the current file on {boxes}; Ctrl-C again to abort now"
    last: dict[str, PushEvent] = {}  # each box's latest event, for the summary a second Ctrl-C prints

    def known() -> None:
        rows = [
            [
                h.name,
                "aborted",
                f"{e.file or '-'} {e.phase} {_mib(e.done)}" if (e := last.get(h.name)) else "-",
            ]
            for h in inventory.hosts
        ]
        out.table(f"push {manifest.model} (aborted)", ["host", "result", "at"], rows)

    with (
        connector_for(reach, inventory, settings) as connector,
        interruptible(out, first, on_abort=known) as cancel,
        progress_bars(out) as bar,
    ):

        def on_progress(e: PushEvent) -> None:
            last[e.host] = e
            bar(e.host, e.phase, e.done, e.total, label=f"{e.host} {e.file}".strip())

        chosen, results = push_to_hosts(
            inventory.hosts,
            connector,
            manifest,
            variant=variant,
            cache=cache,
            lock=lock,
            mirror=mirror,
            reverify=reverify,
            max_parallel=max_parallel or reach.forks,
            root=dest_root,
            progress=on_progress,
            dry_run=dry_run,
            cancel=cancel,
        )
    rows = [_push_row(host, chosen.get(host), result) for host, result in results.items()]
    if out.json:
        out.emit_json({"model": manifest.model, "mirror": mirror, "boxes": rows})
    else:
        out.table(
            f"push {manifest.model}" + (f" from {mirror}" if mirror else ""),
            ["host", "variant", "result", "sent", "files", "error"],
            [
                [r["host"], r["variant"] or "-", r["result"], _mib(r["transferred"]), r["files"], r["error"]]
                for r in rows
            ],
        )
    for host, r in results.items():  # every failed box: one line, its reason and what to do
        if isinstance(r, FleetError) and r.hint:
            out.info(f"{host}: hint: {r.hint}")
    if cancel.is_set():
        raise SystemExit(int(Exit.INTERRUPTED))
    errors = [r for r in results.values() if isinstance(r, FleetError)]
    if errors:
        raise SystemExit(int(max(exit_code_for(e) for e in errors)))


def _push_row(host: str, variant: str | None, result: BoxPush | FleetError) -> dict:
    if isinstance(result, FleetError):
        return {
            "host": host,
            "variant": variant,
            "result": "failed",
            "transferred": 0,
            "files": "",
            "error": result.message,
            "hint": result.hint,
        }
    files = ", ".join(f"{f.name}: {f.status}" for f in result.files)
    return {
        "host": host,
        "variant": variant,
        "result": "skipped" if result.skipped else "planned" if result.planned else "pushed",
        "transferred": result.transferred,
        "files": files,
        "error": "",
        "dest": result.dest,
        "detail": [f.__dict__ for f in result.files],
    }
