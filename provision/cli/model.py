"""`sophon-fleet model ...`: compile your own GLM-4 weights into a ChatGLM4 bmodel with tpu-mlir."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from provision.assets.cache import Cache
from provision.cli.errors import reports_errors
from provision.cli.options import json_option
from provision.cli.output import Output
from provision.compile.checkpoint import load_checkpoint
from provision.compile.pipeline import VARIANTS, CompileEvent, compile_model
from provision.compile.register import register_compiled
from provision.compile.toolchain import ensure_toolchain
from provision.manifest import load_manifest
from provision.settings import load_settings

EPILOG = """\b
Examples:
  sophon-fleet model compile ./glm-4-9b-chat --name glm4-9b-ft --variant int4
  sophon-fleet model compile ./glm-4-9b-chat --name glm4-9b-ft --variant int8 --seqlen 512 --json
  sophon-fleet assets push -m ~/.cache/sophon-fleet/compiled/glm4-9b-ft/glm4-9b-ft.yaml -i fleet.yml
\b
The first run makes the compiler's Python 3.10 venv (tpu-mlir 1.30.2, ~3.6 GB) under the cache. An
interrupted compile resumes from its build directory (graphs already compiled are kept).
"""


@click.group(epilog=EPILOG)
def model() -> None:
    """Models you build yourself: compile Hugging Face GLM-4 weights into a bmodel (tpu-mlir)."""


@model.command("compile", epilog=EPILOG)
@click.argument("checkpoint", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--name", default="glm4-9b-custom", show_default=True, help="Model name (file and manifest).")
@click.option("--variant", type=click.Choice(VARIANTS), default="int4", show_default=True)
@click.option("--seqlen", type=int, default=512, show_default=True, help="SEQLEN the graphs are made for.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), help="Output directory.")
@click.option("--build-dir", type=click.Path(path_type=Path, file_okay=False), help="Resumable build dir.")
@click.option("--base", default="glm4-9b", show_default=True, help="Manifest the new one inherits from.")
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), help="Cache directory.")
@json_option
@click.pass_obj
@reports_errors
def compile_cmd(out: Output, checkpoint, name, variant, seqlen, out_dir, build_dir, base, cache_dir) -> None:
    """Compile a Hugging Face-format GLM-4 directory into <name>_<variant>_1dev.bmodel + token_config."""
    settings = load_settings()
    cache_root = cache_dir or settings.cache_dir
    out_dir = out_dir or cache_root / "compiled" / name
    build_dir = build_dir or cache_root / "compile-build" / f"{name}-seq{seqlen}"
    base_manifest = load_manifest(base)
    load_checkpoint(checkpoint)  # a bad weight is reported before minutes of installing the compiler
    toolchain = ensure_toolchain(cache_root, progress=lambda line: out.info(escape(line)))

    def on_event(event: CompileEvent) -> None:
        seconds = f"{event.seconds:6.1f} s" if event.status != "cached" else "       "
        out.info(escape(f"{event.status:9} {seconds}  {event.graph}  {event.detail}".rstrip()))

    result = compile_model(
        checkpoint,
        toolchain=toolchain,
        name=name,
        variant=variant,
        seqlen=seqlen,
        build_dir=build_dir,
        out_dir=out_dir,
        progress=on_event,
    )
    manifest_path = out_dir / f"{name}.yaml"
    manifest, pins = register_compiled(
        result, name=name, cache=Cache(cache_root), base=base_manifest, manifest_path=manifest_path
    )
    document = {
        "bmodel": str(result.bmodel),
        "token_config": str(result.token_dir),
        "token_zip": str(result.token_zip),
        "manifest": str(manifest_path),
        "pins": str(pins.path),
        "variant": variant,
        "seqlen": seqlen,
        "graphs": result.graphs,
        "compiled": result.compiled,
        "seconds": round(result.seconds, 1),
        "size": result.bmodel.stat().st_size,
        "min_heap_mib": manifest.variant(variant).min_heap_mib,
    }
    if out.json:
        out.emit_json(document)
        return
    out.table(None, ["result", "value"], [(k, v) for k, v in document.items()])
    out.info(
        escape(f"push it like a downloaded model: sophon-fleet assets push -m {manifest_path} -i INVENTORY")
    )
