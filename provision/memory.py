"""TPU memory layouts: npu + vpu + vpp ion heaps, in MiB."""

from __future__ import annotations

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
