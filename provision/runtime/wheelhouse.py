"""Offline wheelhouse for the boxes' Python: built once on the controller, cached, pushed verified.

A box needs no internet: `pip download --only-binary=:all: --platform manylinux2014_<arch>
--python-version 38` fetches the runtime's dependencies for the box's platform (aarch64 on real boxes; a
simulated box reports the controller's own, x86_64 here). Each wheelhouse is a cache directory with a
`wheelhouse.json` index of file names, sizes and sha256, written last: a directory without it is
incomplete and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from provision.assets.cache import sha256_file
from provision.errors import FleetError

# What `chat/` needs on the box: versions that publish wheels for manylinux2014 aarch64 and CPython 3.8.
RUNTIME_REQUIREMENTS = ("numpy==1.24.4", "tiktoken==0.7.0", "sentencepiece==0.2.0")
_BUILDING = threading.Lock()
PLATFORMS = {"aarch64": "manylinux2014_aarch64", "x86_64": "manylinux2014_x86_64"}


@dataclass(frozen=True)
class Wheel:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Wheelhouse:
    dir: Path
    platform: str
    python: str
    wheels: tuple[Wheel, ...]

    @property
    def key(self) -> str:
        """Identifies the exact set of wheels (part of the runtime version on the box)."""
        digest = hashlib.sha256("".join(f"{w.name}:{w.sha256}\n" for w in self.wheels).encode())
        return digest.hexdigest()[:12]


def platform_for(arch: str) -> str:
    try:
        return PLATFORMS[arch]
    except KeyError:
        raise FleetError(
            f"no wheels for the box architecture {arch!r} (known: {', '.join(PLATFORMS)})"
        ) from None


def python_tag(version: str) -> str:
    """'3.8.18' → '38'."""
    major, minor = version.split(".")[:2]
    return f"{major}{minor}"


def ensure_wheelhouse(
    cache_dir: Path, arch: str, python_version: str, requirements: tuple[str, ...] = RUNTIME_REQUIREMENTS
) -> Wheelhouse:
    """The cached wheelhouse for (arch, python), downloading it first when missing or incomplete."""
    platform, tag = platform_for(arch), python_tag(python_version)
    key = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:8]
    target = cache_dir / "wheelhouse" / f"cp{tag}-{platform}-{key}"
    index = target / "wheelhouse.json"
    with _BUILDING:  # boxes deploy in parallel threads: one download per wheelhouse
        if not index.exists():
            _download(target, platform, tag, requirements)
    data = json.loads(index.read_text())
    wheels = tuple(Wheel(**w) for w in data["wheels"])
    return Wheelhouse(target, platform, tag, wheels)


def _download(target: Path, platform: str, tag: str, requirements: tuple[str, ...]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".part-"))
    try:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--platform",
            platform,
            "--python-version",
            tag,
            "--implementation",
            "cp",
            "--abi",
            f"cp{tag}",
            "--dest",
            str(tmp),
            *requirements,
        ]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            raise FleetError(
                f"cannot build the wheelhouse for cp{tag} {platform}: {proc.stderr.strip()[-400:]}",
                hint="the controller needs PyPI (or a pip mirror in pip.conf) once; then it is cached",
            )
        wheels = [_describe(path) for path in sorted(tmp.glob("*.whl"))]
        (tmp / "wheelhouse.json").write_text(
            json.dumps({"platform": platform, "python": tag, "wheels": [vars(w) for w in wheels]}, indent=2)
        )
        if not (target / "wheelhouse.json").exists():  # another process may have finished first
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _describe(path: Path) -> Wheel:
    return Wheel(path.name, path.stat().st_size, sha256_file(path))
