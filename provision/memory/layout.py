"""TPU memory layouts: npu + vpu + vpp ion heaps, in MiB."""

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
        """The TPU memory the sample READMEs compare with their thresholds: npu + vpu + vpp."""
        return self.npu + self.vpu + self.vpp

    def __str__(self) -> str:
        return f"{self.npu}/{self.vpu}/{self.vpp}"


# The max heaps of a 16 GB BM1684X (ddr12 8192, ddr3 4096, ddr4 4096 MiB) under memory_edit v2.10+
# (`memory_edit.sh -p` prints npu 7615, vpu 3071 after the 1 MiB reserve, vpp 4096). Used only as a labelled
# assumption when a box has no memory_edit kit to print its own max.
ASSUMED_MAX_16GB_BM1684X = Layout(7615, 3071, 4096)


def layout_from_mib(sizes: dict[str, int]) -> Layout:
    """`{"npu": .., "vpu": .., "vpp": ..}` → Layout."""
    return Layout(sizes["npu"], sizes["vpu"], sizes["vpp"])


def clip(layout: Layout, maximum: Layout) -> Layout:
    """Each heap no larger than the box's max (e.g. the README's vpu 3072 → 3071 on memory_edit v2.10+)."""
    return Layout(min(layout.npu, maximum.npu), min(layout.vpu, maximum.vpu), min(layout.vpp, maximum.vpp))


def plan_layout(recommended: Layout, maximum: Layout, min_total: int) -> Layout | None:
    """The layout to suggest: the recommended one clipped to the box's max; None when even that stays
    below `min_total` (the variant's threshold), i.e. this box cannot hold the variant at all.

    When the recommendation gives vpu and vpp the same size (the README's 3072/3072), they stay equal:
    7615/3072/3072 becomes 7615/3071/3071 under memory_edit v2.10+'s vpu max of 3071, which is what
    Sophgo's newer samples (Janus, Llama3_2_Vision) use.
    """
    target = clip(recommended, maximum)
    if recommended.vpu == recommended.vpp:
        same = min(target.vpu, target.vpp)
        target = Layout(target.npu, same, same)
    if target.total < min_total:
        return maximum if maximum.total >= min_total else None
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
