"""TPU memory layouts: npu + vpu + vpp ion heaps, in MiB.

A model's threshold is compared with `Layout.usable`, the npu and vpp heaps: on a SoC box libsophon's bmlib
registers only the carveout heaps named "npu" and "vpp" and tries them in that order for every device
allocation (bmlib/src/bmlib_memory.cpp: bm_get_carveout_heap_id, bm_alloc_gmem); vpu belongs to the video
codec. The sample READMEs' "npu/vpu/vpp三者之和" (`Layout.total`) counts vpu too, which the runtime never
uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Layout:
    """Sizes of the three ion heaps in MiB (what `memory_edit.sh -c -npu N -vpu N -vpp N` takes)."""

    npu: int
    vpu: int
    vpp: int

    @property
    def total(self) -> int:
        """All three heaps, as the sample READMEs add them up: npu + vpu + vpp."""
        return self.npu + self.vpu + self.vpp

    @property
    def usable(self) -> int:
        """What the TPU runtime can allocate a model from: npu + vpp (see the module docstring)."""
        return self.npu + self.vpp

    def __str__(self) -> str:
        return f"{self.npu}/{self.vpu}/{self.vpp}"


# The max heaps of a 16 GB BM1684X (ddr12 8192, ddr3 4096, ddr4 4096 MiB) under memory_edit v2.10+
# (`memory_edit.sh -p` prints npu 7615, vpu 3071 after the 1 MiB reserve, vpp 4096). Used only as a labelled
# assumption when a box has no memory_edit kit to print its own max.
ASSUMED_MAX_16GB_BM1684X = Layout(7615, 3071, 4096)


def layout_json(layout: Layout | None) -> dict[str, int] | None:
    """A layout as every JSON output names it: {npu, vpu, vpp, total, usable} MiB."""
    if layout is None:
        return None
    return {
        "npu": layout.npu,
        "vpu": layout.vpu,
        "vpp": layout.vpp,
        "total": layout.total,
        "usable": layout.usable,
    }


def layout_from_mib(sizes: dict[str, int]) -> Layout:
    """`{"npu": .., "vpu": .., "vpp": ..}` → Layout."""
    return Layout(sizes["npu"], sizes["vpu"], sizes["vpp"])


def clip(layout: Layout, maximum: Layout) -> Layout:
    """Each heap no larger than the box's max (e.g. the README's vpu 3072 → 3071 on memory_edit v2.10+)."""
    return Layout(min(layout.npu, maximum.npu), min(layout.vpu, maximum.vpu), min(layout.vpp, maximum.vpp))


def plan_layout(recommended: Layout, maximum: Layout, min_usable: int) -> Layout | None:
    """The layout to suggest: the recommended one clipped to the box's max; None when even that keeps
    less than `min_usable` (the variant's threshold) of npu + vpp, i.e. this box cannot hold the variant.

    When the recommendation gives vpu and vpp the same size (the README's 3072/3072), they stay equal:
    7615/3072/3072 becomes 7615/3071/3071 under memory_edit v2.10+'s vpu max of 3071, which is what
    Sophgo's newer samples (Janus, Llama3_2_Vision) use.
    """
    target = clip(recommended, maximum)
    if recommended.vpu == recommended.vpp:
        same = min(target.vpu, target.vpp)
        target = Layout(target.npu, same, same)
    if target.usable < min_usable:
        return maximum if maximum.usable >= min_usable else None
    return target


MIB = 1024 * 1024
# No BM1684/X board has more than 16 GiB of DDR; a size a box claims beyond this is garbage or hostile.
MAX_PLAUSIBLE_DDR_MIB = 64 << 10
HEAPS = ("npu", "vpu", "vpp")


def layout_of(sizes: Mapping[str, int]) -> Layout | None:
    """`{"npu": .., "vpu": .., "vpp": ..}` (MiB) → Layout; None when a heap is missing."""
    return Layout(*(sizes[k] for k in HEAPS)) if all(k in sizes for k in HEAPS) else None


def snippet(text: str, limit: int = 60) -> str:
    """A short one-line excerpt of a box's output, for error messages."""
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "…")
