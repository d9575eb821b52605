"""Box profiles: the factory states a simulated box can start from."""

from __future__ import annotations

from dataclasses import dataclass

from provision.errors import ConfigError
from provision.memory.layout import Layout


@dataclass(frozen=True)
class Profile:
    """Hardware and software of a box as it leaves the factory."""

    name: str
    heaps: Layout  # npu, vpu, vpp MiB
    chip: str = "bm1684x"
    ddr_mib: tuple[int, int, int] = (8192, 4096, 4096)  # ddr12, ddr3, ddr4
    sdk: str = "V24.04.01"
    libsophon: str = "0.5.1"
    dts: str = "bm1684x_se7_v1.dtb"
    data_mib: int = 2048
    # /boot is a small FAT32 partition on a real box (/dev/mmcblk0p1). This kernel has no vfat (measured:
    # /proc/filesystems lists none, no modules to load), so the stand-in is a tmpfs of this size: the same
    # "no space in /boot", not FAT's rename semantics.
    boot_mib: int = 64
    boot_delay_s: float = 0.5
    preinstalled_kit: bool = False  # memory_edit at /opt/sophon/memory_edit, root-owned (Airbox)


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        # Heaps of a factory AIBOX-1684X (its `memory_edit.sh -p`). Readiness counts npu + vpp (what the
        # runtime allocates from) against models/glm4-9b.yaml's int4 5860 / int8 10045 MiB:
        # factory 3950 + 3072 = 7022: int4 (the README's npu + vpu + vpp = 9070 would say int8);
        Profile("se7-factory", Layout(3950, 2048, 3072)),
        # the vendor's recommended layout clipped to memory_edit v2.10+'s max: 10686, int8;
        Profile("se7-ready-int8", Layout(7615, 3071, 3071)),
        # a box someone trimmed: 6144, int4 only (its npu + vpu + vpp meets the README's int8 7168 exactly);
        Profile("se7-int4-only", Layout(3072, 1024, 3072)),
        # 2560: nothing fits before a new layout.
        Profile("se7-small", Layout(1024, 1024, 1536)),
        # Radxa Airbox: memory_edit ships preinstalled ("系统出厂自带") in /opt/sophon/memory_edit
        Profile("airbox", Layout(3950, 2048, 3072), dts="bm1684x_sm7m_v1.0.dtb", preinstalled_kit=True),
    )
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(
            f"unknown profile {name!r} (known: {', '.join(PROFILES)})", key="--profile"
        ) from None


def parse_profile_spec(spec: str, boxes: int | None) -> list[Profile]:
    """`se7-small:1,se7-ready-int8:2` → one profile per box; a bare name repeats for `boxes` boxes."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if len(parts) == 1 and ":" not in parts[0]:
        return [get_profile(parts[0])] * (boxes if boxes is not None else 1)
    result: list[Profile] = []
    for part in parts:
        name, _, count = part.partition(":")
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"bad profile spec {part!r}: use NAME:COUNT, e.g. se7-small:2", key="--profile")
        result += [get_profile(name)] * int(count)
    if boxes is not None and boxes != len(result):
        raise ConfigError(
            f"{boxes} does not match the {len(result)} boxes of --profile {spec}", key="--boxes"
        )
    return result
