"""The compiler's own Python: a venv with the pinned tpu-mlir, made on first use under the tool's cache.

    <cache>/compiler/tpu-mlir-1.30.2-py3.10/      the venv (`.complete` written last: a half-made one is
                                                  removed and made again)

tpu-mlir 1.30.2 requires CPython 3.10 (its MLIR bindings are cp310). Three facts of this wheel on Debian 12
are handled here: the Ubuntu 22.04 libc.so.6/libm.so.6/libpthread.so.0 it ships in
`lib/third_party/` (which it puts on LD_LIBRARY_PATH for its subprocesses) are moved aside into
`lib/third_party.disabled/`, so the system's are used; `psutil` is imported but not declared; and the ONNX
front end imports `torch` at module level (it calls it only for custom operators). PyPI's torch for cp310
is a CUDA build pulling GBs of nvidia wheels, except the 1.12 series, whose one wheel (776 MB) bundles
CUDA 10.2 and needs nothing else: `torch==1.12.1` is installed for that import.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provision.errors import CompileError

TPU_MLIR_VERSION = "1.30.2"
PYTHON_VERSION = "3.10"
# (what the line says, pip requirements): installed in this order, one progress line each
INSTALL_STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (f"tpu-mlir {TPU_MLIR_VERSION} (312 MB wheel)", (f"tpu-mlir=={TPU_MLIR_VERSION}", "psutil==7.2.2")),
    (
        "onnx, onnxruntime, onnxsim (tpu-mlir's [onnx] extra)",
        ("onnx==1.14.1", "onnxruntime==1.16.3", "onnxsim==0.4.17"),
    ),
    ("torch 1.12.1 (imported by tpu-mlir's ONNX front end; 776 MB wheel)", ("torch==1.12.1",)),
)
SHADOWING_LIBS = ("libc.so.6", "libm.so.6", "libpthread.so.0")


@dataclass(frozen=True)
class Toolchain:
    """A ready compiler venv."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def tool(self, name: str) -> Path:
        return self.root / "bin" / name

    @property
    def package(self) -> Path:
        return Path(glob.glob(str(self.root / "lib" / "python3.*" / "site-packages" / "tpu_mlir"))[0])


def venv_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "compiler" / f"tpu-mlir-{TPU_MLIR_VERSION}-py{PYTHON_VERSION}"


def find_python(candidates: list[str] | None = None) -> str:
    """A working CPython 3.10: `python3.10` on PATH, else pyenv's installs (a pyenv shim on PATH may answer
    "command not found", so every candidate is run once to check its version).

    Raises:
        CompileError: none found, with how to get one.
    """
    found = list(candidates or [shutil.which(f"python{PYTHON_VERSION}") or ""])
    pattern = f"~/.pyenv/versions/{PYTHON_VERSION}.*/bin/python{PYTHON_VERSION}"
    found += sorted(glob.glob(os.path.expanduser(pattern)))
    probe = "import sys; print('%d.%d' % sys.version_info[:2])"
    for path in found:
        if not path or not os.access(path, os.X_OK):
            continue
        done = subprocess.run([path, "-c", probe], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() == PYTHON_VERSION:
            return path
    raise CompileError(
        f"tpu-mlir {TPU_MLIR_VERSION} needs CPython {PYTHON_VERSION}, and none was found",
        hint=f"install python{PYTHON_VERSION} (e.g. `pyenv install {PYTHON_VERSION}`) and put it on PATH",
    )


def ensure_toolchain(cache_dir: Path, progress: Callable[[str], None] = lambda line: None) -> Toolchain:
    """The compiler venv under `cache_dir`, made on first use (a few minutes, ~3.6 GB), reused after.

    Raises:
        CompileError: no Python 3.10, or pip failed (its last lines are in the message).
    """
    root = venv_dir(cache_dir)
    if (root / ".complete").is_file():
        return Toolchain(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two compiles at once make one venv
        if not (root / ".complete").is_file():
            _build(root, progress)
    return Toolchain(root)


def _build(root: Path, progress: Callable[[str], None]) -> None:
    shutil.rmtree(root, ignore_errors=True)  # a venv is not relocatable: made in place, marked at the end
    python = find_python()
    progress(f"creating the compiler venv {root} with {python}")
    _run([python, "-m", "venv", str(root)], "python -m venv")
    pip = [str(root / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for what, requirements in INSTALL_STEPS:
        progress(f"installing {what}")
        _run([*pip, *requirements], f"pip install {' '.join(requirements)}")
    toolchain = Toolchain(root)
    aside = toolchain.package / "lib" / "third_party.disabled"
    aside.mkdir(exist_ok=True)
    for name in SHADOWING_LIBS:
        source = toolchain.package / "lib" / "third_party" / name
        if source.exists():
            source.replace(aside / name)
    progress(f"moved tpu-mlir's bundled {', '.join(SHADOWING_LIBS)} aside (they shadow the system's glibc)")
    marker = {"tpu_mlir": TPU_MLIR_VERSION, "steps": [list(reqs) for _, reqs in INSTALL_STEPS]}
    (root / ".complete").write_text(json.dumps(marker) + "\n")


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise CompileError(f"{what} failed (exit {done.returncode}):\n{tail}")
