"""The vendor's runtime for simulated boxes (`sim up --engine cmodel`), installed once per machine.

    <sim cache>/vendor-runtime-1.30.2/lib/     libbmrt.so, libbmlib.so.0, libcmodel.so, libcpuop.so from the
                                               tpu-mlir wheel (22 MB): libbmrt, libbmlib, the BM1684X cmodel
                                               (the vendor's CPU model of the TPU) and the CPU-op library
    <sim cache>/compiled-standins/<hash>/      the tiny GLM-4 of sim/tinyglm.py compiled by tpu-mlir to real
                                               int4/int8 bmodels + token_config.zip, keyed by a hash of what
                                               they are made from (weights, export code, tpu-mlir version)

A cmodel box gets `sim/sail_cmodel` as its `sophon.sail` and those libraries in
/opt/sophon/libsophon-<ver>/lib (where libsophon puts them on a box), so the unmodified chat runtime runs
real bmodels there. Nothing here is committed: the libraries come from PyPI's wheel at first use.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from provision.compile import toolchain as toolchain_module
from provision.compile.pipeline import EXPORT_MODULES, PACKAGE_DIR, compile_model
from provision.errors import SimError
from sim import tinyglm

ENGINES = ("emulator", "cmodel")
TPU_MLIR_VERSION = toolchain_module.TPU_MLIR_VERSION
RUNTIME_LIBS = {
    "libbmrt.so": "tpu_mlir/lib/libbmrt.so",
    "libbmlib.so.0": "tpu_mlir/lib/libbmlib_bm1684x.so.0",
    "libcmodel.so": "tpu_mlir/lib/libcmodel_bm1684x.so",
    "libcpuop.so": "tpu_mlir/lib/libcpuop.so",
}
SAIL_CMODEL = Path(__file__).with_name("sail_cmodel")
STANDIN_SEED = 0
STANDIN_SEQLEN = 128


def made_once(cache: Path, final: Path, build: Callable[[Path], None]) -> Path:
    """`final` made once: by `build(tmp)` into a temp dir beside it, renamed into place under a lock."""
    if (final / ".complete").exists():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    cache.chmod(0o755)
    with open(cache / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (final / ".complete").exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
            try:
                build(tmp)
                for root, _dirs, _files in os.walk(tmp):
                    os.chmod(root, 0o755)
                (tmp / ".complete").write_text("ok\n")
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def ensure_runtime(sim_cache: Path) -> Path:
    """The directory holding the four runtime libraries (downloaded and unpacked on first use).

    Raises:
        SimError: pip could not fetch the tpu-mlir wheel.
    """

    def build(tmp: Path) -> None:
        wheel_dir = tmp / "wheel"
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check"]
        command += ["--python-version", "3.10", "--only-binary=:all:"]  # the wheel is py3, cp310-only
        done = subprocess.run(
            [*command, "-d", str(wheel_dir), f"tpu-mlir=={TPU_MLIR_VERSION}"], capture_output=True, text=True
        )
        wheels = sorted(wheel_dir.glob("tpu_mlir-*.whl"))
        if done.returncode != 0 or not wheels:
            why = (done.stderr or done.stdout).strip()[-400:]
            raise SimError(
                f"could not download tpu-mlir {TPU_MLIR_VERSION}: {why}",
                hint="the cmodel engine needs PyPI (or a pip mirror) once per machine",
            )
        (tmp / "lib").mkdir()
        with zipfile.ZipFile(wheels[0]) as archive:
            for name, member in RUNTIME_LIBS.items():
                with archive.open(member) as src, open(tmp / "lib" / name, "wb") as out:
                    shutil.copyfileobj(src, out)
                os.chmod(tmp / "lib" / name, 0o755)
        shutil.rmtree(wheel_dir)

    return made_once(sim_cache, sim_cache / f"vendor-runtime-{TPU_MLIR_VERSION}", build) / "lib"


def standin_key(seed: int = STANDIN_SEED, seqlen: int = STANDIN_SEQLEN) -> str:
    """What the compiled stand-ins are made from: the checkpoint's bytes, the export code, tpu-mlir."""
    digest = hashlib.sha256(f"tpu-mlir {TPU_MLIR_VERSION} seqlen {seqlen}\n".encode())
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = tinyglm.write_hf_checkpoint(Path(tmp), seed=seed)
        for name in sorted(p.name for p in checkpoint.iterdir()):
            digest.update(name.encode() + (checkpoint / name).read_bytes())
    for module in EXPORT_MODULES:
        digest.update((PACKAGE_DIR / module).read_bytes())
    digest.update(Path(toolchain_module.__file__).read_bytes())
    return digest.hexdigest()[:16]


def ensure_compiled_standins(
    sim_cache: Path, tool_cache: Path, progress: Callable[[str], None] = lambda line: None
) -> Path:
    """`<dir>/glm4-9b_{int4,int8}_1dev.bmodel` and `<dir>/token_config.zip`: the tiny GLM-4 compiled by
    tpu-mlir (its venv under `tool_cache`), once per machine and content hash."""

    def build(tmp: Path) -> None:
        toolchain = toolchain_module.ensure_toolchain(tool_cache, progress)
        checkpoint = tinyglm.write_hf_checkpoint(tmp / "checkpoint", seed=STANDIN_SEED)
        for variant in tinyglm.VARIANTS:
            compile_model(
                checkpoint,
                toolchain=toolchain,
                name="glm4-9b",
                variant=variant,
                seqlen=STANDIN_SEQLEN,
                build_dir=tmp / "build",
                out_dir=tmp,
                progress=lambda event: progress(f"{event.status} {event.graph}"),
            )
        shutil.rmtree(tmp / "build")
        shutil.rmtree(tmp / "checkpoint")
        shutil.rmtree(tmp / "token_config")
        for path in tmp.iterdir():
            os.chmod(path, 0o644)

    return made_once(sim_cache, sim_cache / "compiled-standins" / standin_key(), build)


def install_cmodel_sail(opt_sophon: Path, libsophon: str, runtime: Path) -> None:
    """The ctypes `sophon.sail` where SAIL's Python package goes, the runtime libraries in libsophon's lib."""
    target = opt_sophon / "sophon-sail" / "python3"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(SAIL_CMODEL, target, ignore=shutil.ignore_patterns("__pycache__"))
    lib = opt_sophon / f"libsophon-{libsophon}" / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    for name in RUNTIME_LIBS:
        (lib / name).unlink(missing_ok=True)
        try:
            os.link(runtime / name, lib / name)
        except OSError:
            shutil.copy2(runtime / name, lib / name)
