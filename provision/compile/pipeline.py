"""`model compile`: a Hugging Face-format GLM-4 directory -> the ChatGLM4 bmodel of sophon-demo's export.

    checkpoint --export (compiler venv)--> <build>/onnx/<graph>.onnx
      --model_transform, model_deploy (the variant's quantisation)--> <build>/<variant>/<graph>.bmodel
      --model_tool --combine--> <out>/<name>_<variant>_1dev.bmodel (+ token_config/, token_config.zip)

Quantisation is the vendor's (LLM-TPU models/GLM4 compile.sh at b2d4693): blocks, block caches and lm_head
W4F16 with groups of 64 (int4) or W8F16 (int8), `--quant_input --quant_output` (lm_head `--quant_input`
only); embeddings F16 with both; the two sampling heads at tpu-mlir's default (F32).

The build directory resumes: a graph whose bmodel is there is not compiled again, and an export whose ONNX
is there is not redone. Each stage records what it was made from (`inputs.json`: the checkpoint's config and
weight files by size and mtime, SEQLEN, variant, tpu-mlir version, a hash of the export code); when that
changes, the stage starts over. Every file reaches its final name by a rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provision.compile import checkpoint as ckpt_module
from provision.compile.checkpoint import Checkpoint, load_checkpoint
from provision.compile.onnx_graph_names import graph_names
from provision.compile.toolchain import TPU_MLIR_VERSION, Toolchain
from provision.errors import CompileError, ConfigError

VARIANTS = ("int4", "int8")
CHIP = "bm1684x"
QUANTIZE = {
    "int4": ("--quantize", "W4F16", "--q_group_size", "64"),
    "int8": ("--quantize", "W8F16"),
}
LOG_TAIL = 12
# the modules the export runs in the compiler venv, staged on their own (not the controller's site-packages)
EXPORT_MODULES = (
    "__init__.py",
    "errors.py",
    "compile/__init__.py",
    "compile/checkpoint.py",
    "compile/safetensors.py",
    "compile/onnx_graph_names.py",
    "compile/onnx_graphs.py",
)
PACKAGE_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class GraphJob:
    """One graph: its model_transform and model_deploy arguments beyond names and paths."""

    name: str
    transform: tuple[str, ...]
    deploy: tuple[str, ...]


@dataclass(frozen=True)
class CompileEvent:
    """One line of progress: a graph exported, compiled or taken from the build dir, or the combine."""

    graph: str
    status: str  # exported | compiled | cached | combined
    seconds: float
    detail: str = ""


@dataclass(frozen=True)
class CompileResult:
    bmodel: Path
    token_dir: Path
    token_zip: Path
    variant: str
    seqlen: int
    config: dict
    graphs: int
    compiled: int  # graphs compiled in this run (the rest came from the build dir)
    seconds: float


def plan_graphs(layers: int, seqlen: int, hidden: int, variant: str) -> list[GraphJob]:
    """Every graph of the bmodel in combine order, with the vendor's quantisation flags for `variant`."""
    quant = QUANTIZE[variant]
    io = ("--quant_input", "--quant_output")
    jobs = []
    for name in graph_names(layers):
        if name == "embedding":
            job = GraphJob(
                name,
                ("--input_shapes", f"[[1,{seqlen}]]", "--input_types", "int32"),
                ("--quantize", "F16", *io),
            )
        elif name == "embedding_cache":
            job = GraphJob(
                name, ("--input_shapes", "[[1,1]]", "--input_types", "int32"), ("--quantize", "F16", *io)
            )
        elif name == "lm_head":
            job = GraphJob(name, ("--input_shapes", f"[[1,{hidden}]]"), (*quant, "--quant_input"))
        elif name in ("greedy_head", "penalty_sample_head"):
            job = GraphJob(name, (), ())
        else:
            job = GraphJob(name, (), (*quant, *io))
        jobs.append(job)
    return jobs


def compile_model(
    checkpoint_dir: Path,
    *,
    toolchain: Toolchain,
    name: str,
    variant: str,
    seqlen: int,
    build_dir: Path,
    out_dir: Path,
    progress: Callable[[CompileEvent], None] = lambda event: None,
) -> CompileResult:
    """Compile `checkpoint_dir` into `<out_dir>/<name>_<variant>_1dev.bmodel` with its token config.

    Raises:
        ConfigError: a bad checkpoint (missing or wrong-shaped weight, bad config.json) or option.
        CompileError: a tpu-mlir step failed (its log's last lines and path are in the message).
    """
    if variant not in VARIANTS:
        raise ConfigError(
            f"unknown variant {variant!r} (expected one of: {', '.join(VARIANTS)})", key="--variant"
        )
    if seqlen < 16:
        raise ConfigError(f"SEQLEN {seqlen} is too small (at least 16)", key="--seqlen")
    started = time.monotonic()
    ckpt = load_checkpoint(checkpoint_dir)
    cfg = ckpt.config
    onnx_dir = _stage(build_dir / "onnx", _fingerprint(ckpt, seqlen, None))
    variant_dir = _stage(build_dir / variant, _fingerprint(ckpt, seqlen, variant))
    jobs = plan_graphs(cfg["layers"], seqlen, cfg["hidden"], variant)
    export_graphs(toolchain, ckpt, onnx_dir, seqlen, [j.name for j in jobs], build_dir, progress)
    compiled = 0
    for job in jobs:
        target = variant_dir / f"{job.name}.bmodel"
        if target.is_file():
            progress(CompileEvent(job.name, "cached", 0.0))
            continue
        begun = time.monotonic()
        _compile_graph(toolchain, job, onnx_dir / f"{job.name}.onnx", variant_dir / job.name, target)
        compiled += 1
        progress(
            CompileEvent(job.name, "compiled", time.monotonic() - begun, f"{target.stat().st_size} bytes")
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    bmodel = out_dir / f"{name}_{variant}_1dev.bmodel"
    begun = time.monotonic()
    stamp = variant_dir / "combined.json"
    if compiled == 0 and _same_file(stamp, bmodel):
        progress(CompileEvent(bmodel.name, "cached", 0.0))  # recombining would change its timestamp bytes
    else:
        _combine(toolchain, [variant_dir / f"{j.name}.bmodel" for j in jobs], bmodel, variant_dir)
        stamp.write_text(json.dumps(_file_stamp(bmodel)) + "\n")
        size = bmodel.stat().st_size
        progress(CompileEvent(bmodel.name, "combined", time.monotonic() - begun, f"{size} bytes"))
    token_dir, token_zip = write_token_config(ckpt, out_dir)
    return CompileResult(
        bmodel=bmodel,
        token_dir=token_dir,
        token_zip=token_zip,
        variant=variant,
        seqlen=seqlen,
        config=cfg,
        graphs=len(jobs),
        compiled=compiled,
        seconds=time.monotonic() - started,
    )


def _file_stamp(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _same_file(stamp: Path, path: Path) -> bool:
    try:
        return path.is_file() and json.loads(stamp.read_text()) == _file_stamp(path)
    except (OSError, ValueError):
        return False


def _fingerprint(ckpt: Checkpoint, seqlen: int, variant: str | None) -> dict:
    files = sorted({f.path for f in ckpt.files.values()})
    code = hashlib.sha256()
    for module in EXPORT_MODULES:
        code.update((PACKAGE_DIR / module).read_bytes())
    return {
        "config": hashlib.sha256((ckpt.root / "config.json").read_bytes()).hexdigest(),
        "weights": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files],
        "seqlen": seqlen,
        "variant": variant,
        "tpu_mlir": TPU_MLIR_VERSION,
        "export_code": code.hexdigest()[:16],
    }


def _stage(directory: Path, fingerprint: dict) -> Path:
    """`directory`, emptied first when it was made from other inputs."""
    record = directory / "inputs.json"
    try:
        same = json.loads(record.read_text()) == fingerprint
    except (OSError, ValueError):
        same = False
    if not same:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(fingerprint, indent=1) + "\n")
    return directory


def export_graphs(
    toolchain: Toolchain,
    ckpt: Checkpoint,
    onnx_dir: Path,
    seqlen: int,
    names: list[str],
    build_dir: Path,
    progress: Callable[[CompileEvent], None],
) -> None:
    missing = [n for n in names if not (onnx_dir / f"{n}.onnx").is_file()]
    if not missing:
        return
    staged = build_dir / "exporter"
    shutil.rmtree(staged, ignore_errors=True)
    for module in EXPORT_MODULES:
        (staged / "provision" / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGE_DIR / module, staged / "provision" / module)
    env = _tool_env(toolchain)
    env["PYTHONPATH"] = str(staged)
    command = [str(toolchain.python), "-m", "provision.compile.onnx_graphs", str(ckpt.root), str(onnx_dir)]
    begun = time.monotonic()
    log = build_dir / "export.log"
    _run_logged([*command, str(seqlen), *missing], build_dir, env, log, "ONNX export")
    progress(CompileEvent("onnx", "exported", time.monotonic() - begun, f"{len(missing)} graphs"))


def _tool_env(toolchain: Toolchain) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{toolchain.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def _compile_graph(toolchain: Toolchain, job: GraphJob, onnx_file: Path, work: Path, target: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = _tool_env(toolchain)
    transform = [
        str(toolchain.tool("model_transform")),
        "--model_name",
        job.name,
        "--model_def",
        str(onnx_file),
        *job.transform,
        "--mlir",
        f"{job.name}.mlir",
    ]
    _run_logged(transform, work, env, work / "transform.log", f"{job.name}: model_transform")
    deploy = [
        str(toolchain.tool("model_deploy")),
        "--mlir",
        f"{job.name}.mlir",
        *job.deploy,
        "--chip",
        CHIP,
        "--model",
        f"{job.name}.bmodel",
    ]
    _run_logged(deploy, work, env, work / "deploy.log", f"{job.name}: model_deploy")
    produced = work / f"{job.name}.bmodel"
    if not produced.is_file():
        raise CompileError(f"{job.name}: model_deploy wrote no bmodel (see {work / 'deploy.log'})")
    os.replace(produced, target)
    shutil.rmtree(work, ignore_errors=True)  # intermediate MLIR and npz files: only the bmodel is kept


def _combine(toolchain: Toolchain, parts: list[Path], bmodel: Path, work: Path) -> None:
    partial = bmodel.with_name(bmodel.name + ".part")
    command = [str(toolchain.tool("model_tool")), "--combine", *map(str, parts), "-o", str(partial)]
    _run_logged(command, work, _tool_env(toolchain), work / "combine.log", "model_tool --combine")
    if not partial.is_file():
        raise CompileError(f"model_tool --combine wrote nothing (see {work / 'combine.log'})")
    os.replace(partial, bmodel)


def _run_logged(command: list[str], cwd: Path, env: dict, log: Path, what: str) -> None:
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        lines = log.read_text(errors="replace").strip().splitlines()[-LOG_TAIL:]
        raise CompileError(f"{what} failed (exit {done.returncode}); log {log}:\n" + "\n".join(lines))


def write_token_config(ckpt: Checkpoint, out_dir: Path) -> tuple[Path, Path]:
    """`<out_dir>/token_config/` with the checkpoint's tokenizer files, and `token_config.zip` of it (what
    sophon-demo ships: it unzips to token_config/)."""
    token_dir = out_dir / "token_config"
    token_dir.mkdir(parents=True, exist_ok=True)
    for source in ckpt.token_files():
        shutil.copyfile(source, token_dir / source.name)
    token_zip = out_dir / "token_config.zip"
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".token_config.zip.")
    os.close(fd)
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ckpt_module.TOKEN_FILES:
            info = zipfile.ZipInfo(f"token_config/{name}", date_time=(2024, 8, 1, 0, 0, 0))
            archive.writestr(info, (token_dir / name).read_bytes(), zipfile.ZIP_DEFLATED)
    os.replace(tmp, token_zip)
    return token_dir, token_zip
