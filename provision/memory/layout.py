"""TPU memory layouts: npu + vpu + vpp ion heaps, in MiB."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from provision.errors import FactError


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
# (npu 7615, vpu 3071 after v2.10's 1 MiB vpu reserve, vpp 4096). Used only as a labelled
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
        target = maximum if maximum.total >= min_total else None
    return target


# ---------------------------------------------------------------------------------------------- -c output

MIB = 1024 * 1024
HEAPS = ("npu", "vpu", "vpp")
_CHECK = re.compile(r"^Info: check (npu|vpu|vpp) size: 0x([0-9a-fA-F]+) \[(\d+) MiB\]\s*$")
_MAX = re.compile(r"^Info: max (npu|vpu|vpp) size: 0x([0-9a-fA-F]+) \[(\d+) MiB\]\s*$")
_AREA = re.compile(r"^Info: ion (npu|vpu|vpp) mem area\((ddr\d+)\): 0x([0-9a-fA-F]+) ")
_NEW_IMAGE = re.compile(r"^sudo cp (\S+/emmcboot\.itb) /boot/emmcboot\.itb")


@dataclass(frozen=True)
class ConfigureReport:
    """What `memory_edit.sh -c -npu N -vpu N -vpp N` printed (configuration and check blocks, or the one
    `Error: <heap> size 0x… error` line and exit 255 of a size over the maximum).

    `errors` holds every `Error…` line (over-max sizes, usage, en_emmcfile, ...); `check` the sizes the
    script re-read from the edited device tree; `ok` is True only when it printed both `check edit size ok`
    and `en_emmcfile ok` and no error.
    """

    version: str | None
    dts: str | None
    max: Layout | None
    areas: Mapping[str, int]  # ion heap areas the script placed, MiB (`ion vpu mem area(ddr3): ...`)
    check: Layout | None
    size_ok: bool
    image_ok: bool
    new_image: str | None  # where the script wrote the new emmcboot.itb (v2.12's "sudo cp ..." line)
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.size_ok and self.image_ok and not self.errors


def parse_memory_edit_c(text: str) -> ConfigureReport:
    """Parse `memory_edit.sh -c` output (v2.9 … v2.12). Error lines are data (`errors`); output that is not
    memory_edit's at all raises FactError."""
    version = dts = new_image = None
    maxes: dict[str, int] = {}
    checks: dict[str, int] = {}
    areas: dict[str, int] = {}
    errors: list[str] = []
    warnings: list[str] = []
    size_ok = image_ok = recognised = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.lower().startswith("error"):
            errors.append(line)
            recognised = True
        elif line.startswith("Warning"):
            warnings.append(line)
        elif line.upper().startswith("INFO: VERSION:"):
            version, recognised = line.split(":", 2)[2].strip(), True
        elif line.startswith("Info: use dts file "):
            dts = line[len("Info: use dts file ") :].rsplit("/", 1)[-1]
        elif match := _MAX.match(line):
            maxes[match.group(1)] = int(match.group(2), 16) // MIB
        elif match := _CHECK.match(line):
            checks[match.group(1)] = int(match.group(2), 16) // MIB
        elif match := _AREA.match(line):
            areas[match.group(1)] = int(match.group(3), 16) // MIB
        elif line == "Info: check edit size ok":
            size_ok = True
        elif line == "Info: en_emmcfile ok":
            image_ok = True
        elif match := _NEW_IMAGE.match(line):
            new_image = match.group(1)
    if not recognised:
        raise FactError(f"not memory_edit.sh output: {_snippet(text)}")
    return ConfigureReport(
        version=version,
        dts=dts,
        max=_layout(maxes),
        areas=areas,
        check=_layout(checks),
        size_ok=size_ok,
        image_ok=image_ok,
        new_image=new_image,
        errors=tuple(errors),
        warnings=tuple(warnings),
    )


def _layout(sizes: Mapping[str, int]) -> Layout | None:
    return Layout(*(sizes[k] for k in HEAPS)) if all(k in sizes for k in HEAPS) else None


def _snippet(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "…")
