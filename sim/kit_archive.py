"""The simulated memory_edit kit, packaged like Sophgo's releases.

    memory_edit_v2.12.tar.xz         memory_edit/{memory_edit.sh, bintools/{memory_edit,simfit,bootfit}.py}
    DeviceMemoryModificationKit.tgz  DeviceMemoryModificationKit/memory_edit_v2.12.tar.xz

`bintools/simfit.py` is `sim/itb.py` (it writes and reads the FIT boot image, playing dumpimage/dtc/mkimage)
and `bintools/bootfit.py` is `provision/memory/bootfit.py` (the FIT/FDT parser it reads with).
Archives are byte-for-byte reproducible, so their sha256 can be pinned.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

KIT_DIR = Path(__file__).with_name("kit")
ITB = Path(__file__).with_name("itb.py")
BOOTFIT = Path(__file__).parent.parent / "provision" / "memory" / "bootfit.py"
VERSION = "2.12"
KIT_NAME = f"memory_edit_v{VERSION}.tar.xz"
VENDOR_KIT_NAME = "DeviceMemoryModificationKit.tgz"
MTIME = 1751241600  # 2025-06-30, the v2.12 commit


@dataclass(frozen=True)
class Kit:
    tarball: Path  # memory_edit_v2.12.tar.xz
    vendor_bundle: Path  # DeviceMemoryModificationKit.tgz


def kit_members() -> list[tuple[str, bytes, int]]:
    """(path in archive, content, mode) of every file of the kit."""
    return [
        ("memory_edit/memory_edit.sh", (KIT_DIR / "memory_edit.sh").read_bytes(), 0o755),
        ("memory_edit/bintools/memory_edit.py", (KIT_DIR / "memory_edit.py").read_bytes(), 0o755),
        ("memory_edit/bintools/simfit.py", ITB.read_bytes(), 0o644),
        ("memory_edit/bintools/bootfit.py", BOOTFIT.read_bytes(), 0o644),
    ]


def _tar(members: list[tuple[str, bytes, int]], mode: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode, format=tarfile.GNU_FORMAT) as tar:
        dirs = sorted({str(Path(name).parent) for name, _, _ in members} - {"."})
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
            tar.addfile(info)
        for name, data, perm in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), perm, MTIME
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def build_kit(dest: Path) -> Kit:
    """Write both archives into `dest` (reproducible bytes)."""
    dest.mkdir(parents=True, exist_ok=True)
    tarball = _tar(kit_members(), "w:xz")
    bundle = _tar([(f"DeviceMemoryModificationKit/{KIT_NAME}", tarball, 0o644)], "w:gz")
    (dest / KIT_NAME).write_bytes(tarball)
    (dest / VENDOR_KIT_NAME).write_bytes(bundle)
    return Kit(dest / KIT_NAME, dest / VENDOR_KIT_NAME)


def install_unpacked(target: Path) -> Path:
    """Unpack the kit into `target` (for boxes that ship it preinstalled, like the Airbox)."""
    script_dir = target / "memory_edit"
    (script_dir / "bintools").mkdir(parents=True, exist_ok=True)
    for name, data, perm in kit_members():
        path = target / name
        path.write_bytes(data)
        path.chmod(perm)
    return script_dir


def copy_kit(src: Kit, dest: Path) -> None:
    for path in (src.tarball, src.vendor_bundle):
        shutil.copyfile(path, dest / path.name)
