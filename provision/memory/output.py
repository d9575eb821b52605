"""What Sophgo's `memory_edit.sh` prints, parsed: `-p` (the box's ddr, max and current heaps) and `-c`
(the edit's checks and the new image). Pure functions from captured text, tested on fixtures under
`tests/facts/memory_edit_p/` and `tests/facts/memory_edit_c/`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from provision.errors import FactError
from provision.memory.layout import MAX_PLAUSIBLE_DDR_MIB, MIB, Layout, layout_of, snippet


@dataclass(frozen=True)
class MemoryEditReport:
    """`memory_edit.sh -p` output (`Info: max|now <heap> size: 0x… [N MiB]` lines); sizes in MiB keyed
    by heap (`npu+vpp` on BM1688)."""

    version: str | None
    dts: str | None
    ddr_mib: Mapping[str, int]
    max_mib: Mapping[str, int]
    now_mib: Mapping[str, int]
    warnings: tuple[str, ...] = ()

    @property
    def max(self) -> Layout | None:
        return layout_of(self.max_mib)

    @property
    def now(self) -> Layout | None:
        """Current heaps, or None when they read as 0x0 (the script's silent sign that sudo failed)."""
        layout = layout_of(self.now_mib)
        return None if layout is None or layout.total == 0 else layout


_ME_SIZE = re.compile(r"^Info: (max|now) ([a-z+]+) size: 0x([0-9a-fA-F]+) \[(\d+) MiB\]\s*$")
_ME_DDR = re.compile(r"^Info: (ddr\w*)_size (\d+) Byte")


def parse_memory_edit_p(text: str) -> MemoryEditReport:
    """`memory_edit.sh -p` (v1.6 … v2.12; BM1684/X and BM1688 lines). Error lines or no `max` block raise."""
    version = dts = None
    ddr: dict[str, int] = {}
    sizes: dict[str, dict[str, int]] = {"max": {}, "now": {}}
    warnings = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.lower().startswith("error"):
            raise FactError(f"memory_edit.sh -p failed: {line}")
        if line.startswith("Warning"):
            warnings.append(line)
        elif line.upper().startswith("INFO: VERSION:"):
            version = line.split(":", 2)[2].strip()
        elif line.startswith("Info: use dts file "):
            dts = line[len("Info: use dts file ") :].rsplit("/", 1)[-1]
        elif match := _ME_DDR.match(line):
            ddr[match.group(1)] = int(match.group(2)) // MIB
        elif match := _ME_SIZE.match(line):
            kind, key, hex_bytes, _ = match.groups()
            sizes[kind][key] = int(hex_bytes, 16) // MIB
    if not sizes["max"]:
        raise FactError(f"memory_edit.sh -p printed no max sizes: {snippet(text)}")
    if "npu" not in sizes["max"] or ("vpu" not in sizes["max"] and "npu+vpp" not in sizes["max"]):
        raise FactError("memory_edit.sh -p output is truncated (max sizes incomplete)")
    _check_against_ddr(ddr, sizes)
    return MemoryEditReport(version, dts, ddr, sizes["max"], sizes["now"], tuple(warnings))


def _check_against_ddr(ddr: Mapping[str, int], sizes: Mapping[str, Mapping[str, int]]) -> None:
    """Every size `-p` claims must fit the DDR it reports (its banks), and that must be plausible."""
    banks = {k: v for k, v in ddr.items() if k != "ddr"}
    total = sum(banks.values()) if banks else MAX_PLAUSIBLE_DDR_MIB
    if total > MAX_PLAUSIBLE_DDR_MIB:
        raise FactError(f"memory_edit.sh -p claims {total} MiB of DDR, more than any BM1684/X board has")
    for kind, heaps in sizes.items():
        for heap, mib in heaps.items():
            if mib > total:
                raise FactError(
                    f"memory_edit.sh -p claims {kind} {heap} {mib} MiB, more than the box's DDR "
                    f"({total} MiB)",
                    hint="the kit or the box is broken (or hostile): check it with `doctor`",
                )


_CHECK = re.compile(r"^Info: check (npu|vpu|vpp) size: 0x([0-9a-fA-F]+) \[(\d+) MiB\]\s*$")
_MAX = re.compile(r"^Info: max (npu|vpu|vpp) size: 0x([0-9a-fA-F]+) \[(\d+) MiB\]\s*$")
_AREA = re.compile(r"^Info: ion (npu|vpu|vpp) mem area\((ddr\d+)\): 0x([0-9a-fA-F]+) ")
_NEW_IMAGE = re.compile(r"^sudo cp (\S+/emmcboot\.itb) /boot/emmcboot\.itb")


@dataclass(frozen=True)
class ConfigureReport:
    """What `memory_edit.sh -c -npu N -vpu N -vpp N` printed: its configuration and check
    blocks, or an `Error: <heap> size 0x… error` line and exit 255.

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
        raise FactError(f"not memory_edit.sh output: {snippet(text)}")
    return ConfigureReport(
        version=version,
        dts=dts,
        max=layout_of(maxes),
        areas=areas,
        check=layout_of(checks),
        size_ok=size_ok,
        image_ok=image_ok,
        new_image=new_image,
        errors=tuple(errors),
        warnings=tuple(warnings),
    )
