"""A simulated box's "hardware": a JSON state file and the files the box shows for it.

The box sees these through bind mounts at the real paths: `/proc/cpuinfo`, `/proc/sys/kernel/random/boot_id`,
`/sys/firmware/devicetree/base/info/file-name` (the target of `/proc/device-tree`), root-only
`/sys/kernel/debug/ion/bm_{npu,vpu,vpp}_heap_dump/total_mem`, and `/usr/sbin/bm_version`'s output.
Files are rewritten in place (same inode) so bind mounts see changes at once.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sim.profiles import Profile

MIB = 1024 * 1024


@dataclass
class BoxHardware:
    """Mutable state of one box, saved as `hw.json` in its directory."""

    name: str
    profile: str
    chip: str
    ddr_mib: list[int]
    heaps: list[int]  # what the box booted with (npu, vpu, vpp MiB)
    sdk: str
    libsophon: str
    dts: str
    boot_delay_s: float
    faults: list[str] = field(default_factory=list)
    tpu_delay_ms: int = 0
    boot_count: int = 0
    boot_id: str = ""

    @classmethod
    def from_profile(cls, name: str, profile: Profile) -> BoxHardware:
        h = profile.heaps
        return cls(
            name,
            profile.name,
            profile.chip,
            list(profile.ddr_mib),
            [h.npu, h.vpu, h.vpp],
            profile.sdk,
            profile.libsophon,
            profile.dts,
            profile.boot_delay_s,
        )

    def save(self, box_dir: Path) -> None:
        tmp = box_dir / "hw.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, box_dir / "hw.json")

    @classmethod
    def load(cls, box_dir: Path) -> BoxHardware:
        return cls(**json.loads((box_dir / "hw.json").read_text()))


def write_in_place(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Rewrite a file keeping its inode, so a bind mount of it sees the new content."""
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, raw)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def cpuinfo(chip: str) -> str:
    """An 8-core Cortex-A53 cpuinfo as a BM1684(X) shows it (`model name : bm1684x`)."""
    core = (
        "processor\t: {i}\nBogoMIPS\t: 100.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid\n"
        "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd03\n"
        "CPU revision\t: 4\nmodel name\t: {chip}\n\n"
    )
    return "".join(core.format(i=i, chip=chip) for i in range(8))


def bm_version(hw: BoxHardware) -> str:
    """`bm_version` output in the format the SE7 documentation shows."""
    chip = hw.chip.upper()
    return (
        f"SophonSDK version: {hw.sdk}\n"
        f"sophon-soc-libsophon : {hw.libsophon}\n"
        f"sophon-soc-libsophon-dev : {hw.libsophon}\n"
        "sophon-mw-soc-sophon-ffmpeg : 0.10.0\n"
        "sophon-mw-soc-sophon-opencv : 0.10.0\n"
        "BL2 v2.7(release):6003f3c33 Built : 06:55:32, Apr 25 2024\n"
        "BL31 v2.7(release):6003f3c33 Built : 06:55:32, Apr 25 2024\n"
        f"U-Boot 2022.10 6003f3c33-dirty (Apr 25 2024 - 07:03:51 +0000) Sophon {chip}\n"
        "KernelVersion : Linux sophon 5.4.217-bm1684-g538a73e086dc-dirty #1 SMP Thu Apr 25 06:55:45 UTC 2024"
        " aarch64 aarch64 aarch64 GNU/Linux\n"
        "HWVersion: 0x00\nMCUVersion: 0x05\n"
    )


def render(hw: BoxHardware, box_dir: Path) -> None:
    """Write every hardware view file of the box (creating the tree on first use)."""
    views = box_dir / "hw"
    info = views / "firmware" / "devicetree" / "base" / "info"
    info.mkdir(parents=True, exist_ok=True)
    write_in_place(views / "cpuinfo", cpuinfo(hw.chip), 0o444)
    write_in_place(views / "bm_version.txt", bm_version(hw), 0o444)
    write_in_place(info / "file-name", hw.dts.encode() + b"\0", 0o444)
    write_in_place(views / "boot_id", hw.boot_id + "\n", 0o444)
    (views / "firmware" / "sophon-sim").mkdir(exist_ok=True)
    write_in_place(views / "firmware" / "sophon-sim" / "tpu_delay_ms", f"{hw.tpu_delay_ms}\n", 0o444)
    write_in_place(views / "firmware" / "sophon-sim" / "faults", "".join(f + "\n" for f in hw.faults), 0o444)
    # what a process can hold on the TPU: libbmlib allocates device memory from the ion carveout heaps named
    # "npu" and "vpp" only (npu first; libsophon bmlib_memory.cpp, bm_get_carveout_heap_id / bm_alloc_gmem),
    # never from vpu. Both sophon.sail engines bound their allocations by it.
    tpu_heap = (hw.heaps[0] + hw.heaps[2]) * MIB
    write_in_place(views / "firmware" / "sophon-sim" / "tpu_heap_bytes", f"{tpu_heap}\n", 0o444)
    debug = views / "debug"
    debug.mkdir(mode=0o700, exist_ok=True)
    debug.chmod(0o700)
    (debug / "ion").mkdir(parents=True, exist_ok=True)
    for key, mib in zip(("npu", "vpu", "vpp"), hw.heaps, strict=True):
        heap = debug / "ion" / f"bm_{key}_heap_dump"
        if mib == 0:  # a deleted heap (memory_edit -vpu 0): the ion driver registers none, no debugfs dir
            shutil.rmtree(heap, ignore_errors=True)
            continue
        heap.mkdir(parents=True, exist_ok=True)
        write_in_place(heap / "total_mem", f"{mib * MIB}\n", 0o400)
        write_in_place(heap / "alloc_mem", "0\n", 0o400)
