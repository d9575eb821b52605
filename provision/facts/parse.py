"""Facts about a box: ONE probe script per box (one round trip), and pure parsers of its output.

`gather(transport)` runs `provision.facts.probe`'s script (its sudo part reads the password from the same
command's stdin) and `parse_probe(output)` turns the output into `Facts`. Each section parser is a pure
function from captured text to a frozen dataclass (or a plain value), tested on fixture files under
`tests/facts/<fact>/`; unparseable or truncated output raises FactError, never anything else.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from provision.errors import FactError
from provision.facts.probe import MARK, probe_script
from provision.memory.layout import HEAPS, MAX_PLAUSIBLE_DDR_MIB, MIB, Layout, layout_of, snippet
from provision.memory.output import MemoryEditReport, parse_memory_edit_c, parse_memory_edit_p
from provision.ssh import sudo
from provision.ssh.transport import Transport, quote_command

# ---------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class BmVersion:
    """`bm_version` output: the SDK line, `package : version` lines, the U-Boot chip line."""

    sdk: str | None  # "V24.04.01", "v23.09 LTS-SP5", "2.1" (BM1688 line)
    sdk_line: str | None
    bm1688_style: bool
    packages: Mapping[str, str]  # "sophon-soc-libsophon" -> "0.5.1"
    chip: str | None  # from the U-Boot line: "BM1684X"
    kernel: str | None
    hw_version: str | None
    mcu_version: str | None


@dataclass(frozen=True)
class PythonFacts:
    version: str | None
    sail_ok: bool
    sail_error: str | None


@dataclass(frozen=True)
class Asset:
    model: str
    variant: str
    verified: bool


@dataclass(frozen=True)
class RootFacts:
    """What the root part of the probe read: debugfs heap sizes and, with a kit, `memory_edit.sh -p`."""

    heaps_now: Layout | None
    memory_edit: MemoryEditReport | None
    error: str | None  # sudo refused, debugfs unreadable, memory_edit failed


@dataclass(frozen=True)
class Facts:
    """Everything one probe learnt about a box. Unknown values are None; `problems` says why."""

    hostname: str | None
    boot_id: str | None
    arch: str | None
    kernel_release: str | None
    kernel_version: str | None  # `uname -v`
    cpu_model: str | None
    dts: str | None
    bm_version: BmVersion | None
    libsophon: str | None
    driver: str | None
    python: PythonFacts
    mem_total_mib: int | None
    disk_free_mib: Mapping[str, int | None]
    kit_path: str | None
    heaps_now: Layout | None
    heaps_max: Layout | None
    heaps_source: str | None  # "debugfs" | "memory_edit"
    memory_edit: MemoryEditReport | None
    runtime: str | None
    assets: tuple[Asset, ...]
    problems: tuple[str, ...] = field(default=())
    replayed: tuple[str, ...] = ()  # kept parts the box replayed from this boot: "root", "box" (probe.py)
    sudo_refusal: str | None = None  # "wrong-password" | "no-password" | "not-allowed" (ssh/sudo.py)

    @property
    def chip(self) -> str | None:
        """bm1684x / bm1684 / ...: cpuinfo's model name, else the dts name's prefix, else U-Boot's."""
        if self.cpu_model and self.cpu_model.lower().startswith(("bm", "cv", "sg")):
            return self.cpu_model.lower()
        if self.dts and "_" in self.dts:
            return self.dts.split("_", 1)[0].lower()
        chip = self.bm_version.chip if self.bm_version else None
        return chip.lower() if chip else None

    @property
    def mode(self) -> str:
        """SoC when the Sophon chip runs Linux itself (cpuinfo names it), else PCIe (a card in a host)."""
        return "SoC" if self.cpu_model and self.cpu_model.lower().startswith("bm") else "PCIe"

    @property
    def sdk(self) -> str | None:
        return self.bm_version.sdk if self.bm_version else None


# ---------------------------------------------------------------------------------------------- gather


def gather(transport: Transport, *, timeout: float | None = None, fresh: bool = False) -> Facts:
    """Run the probe on one box (one round trip) and parse it. Raises ConnectError, RemoteError, FactError.

    `fresh`: ask everything again instead of replaying what the box kept from this boot (doctor does).
    """
    password = transport.become_password
    script = probe_script(with_password=password is not None, fresh=fresh)
    result = transport.run(
        quote_command(["sh", "-c", script]),
        stdin=(password + "\n") if password is not None else None,
        timeout=timeout,
        check=False,
    )
    return parse_probe(result.stdout)


def split_sections(output: str) -> dict[str, str]:
    """Sections of the probe output by name; FactError when the end marker is missing (truncated)."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith(MARK) and line != f"{MARK}memory_edit_p":  # that one is inside the root part
            current = sections.setdefault(line[len(MARK) :].strip(), [])
            continue
        if current is not None:
            current.append(line)
    if "end" not in sections:
        raise FactError("the probe's output is truncated (no end marker)", hint="run `doctor` on the box")
    return {name: "\n".join(lines).strip("\n") for name, lines in sections.items()}


def parse_probe(output: str) -> Facts:
    """The whole probe output → Facts. A section that cannot be read becomes None plus a problem."""
    sections = split_sections(output)
    problems: list[str] = []

    def section(name: str) -> str:
        return sections.get(name, "")

    def attempt(parser: Callable[[str], Any], name: str) -> Any:
        try:
            return parser(section(name))
        except FactError as exc:
            problems.append(f"{name}: {exc.message}")
            return None

    uname = parse_uname(section("uname"))
    bm = attempt(parse_bm_version, "bm_version") if section("bm_version").strip() else None
    root = attempt(parse_root, "root") or RootFacts(None, None, "root part did not run")
    if root.error:
        problems.append(f"heaps: {root.error}")
    refusal = _refusal(sections, root)
    if refusal is not None and not root.error:  # the heaps were replayed; sudo refused its check
        problems.append(f"sudo: {sudo.describe(refusal)}")
    me = root.memory_edit
    heaps_now = root.heaps_now or (me.now if me else None)
    return Facts(
        hostname=_first_line(section("hostname")),
        boot_id=_first_line(section("boot_id")),
        arch=uname[0] or None,
        kernel_release=uname[1] or None,
        kernel_version=uname[2] or None,
        cpu_model=parse_cpuinfo(section("cpuinfo")),
        dts=_first_line(section("dts")),
        bm_version=bm,
        libsophon=parse_libsophon(section("libsophon"), bm),
        driver=_first_line(section("driver")),
        python=parse_python(section("python")),
        mem_total_mib=attempt(parse_meminfo, "meminfo"),
        disk_free_mib=attempt(parse_df, "df") or {},
        kit_path=_first_line(section("kit")),
        heaps_now=heaps_now,
        heaps_max=me.max if me else None,
        heaps_source="debugfs" if root.heaps_now else ("memory_edit" if heaps_now else None),
        memory_edit=me,
        runtime=parse_runtime(section("runtime")),
        assets=parse_assets(section("assets")),
        problems=tuple(problems),
        replayed=tuple(line.strip() for line in section("replayed").splitlines() if line.strip()),
        sudo_refusal=refusal.value if refusal is not None else None,
    )


# ---------------------------------------------------------------------------------------------- parsers


def _first_line(text: str) -> str | None:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return None


def parse_uname(text: str) -> tuple[str | None, str | None, str | None]:
    """(machine, release, version) from `uname -rvm` (one line) or `uname -m; -r; -v` (three lines)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) >= 3:
        return lines[0], lines[1], lines[2]
    words = lines[0].split() if lines else []
    if len(words) < 2:
        return None, None, None
    return words[-1], words[0], " ".join(words[1:-1]) or None


def parse_cpuinfo(text: str) -> str | None:
    """`model name\\t: bm1684x` → "bm1684x"."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "model name":
            return value.strip() or None
    return None


_SDK = re.compile(r"^SophonSDK(?:\((?P<chip>[^)]*)\))?(?: version)?\s*:?\s*(?P<version>\S.*)?$")
_PACKAGE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9-]+)\s*:\s*(?P<version>\S+)$")


def parse_bm_version(text: str) -> BmVersion:
    """`bm_version` output (also the BM1688-style first line `SophonSDK(BM1688) 2.1`)."""
    sdk = sdk_line = chip = kernel = hw = mcu = None
    bm1688 = False
    packages: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if match := _SDK.match(line):
            sdk_line, sdk = line, (match.group("version") or "").strip() or None
            bm1688 = bool(match.group("chip"))
        elif line.startswith("U-Boot"):
            found = re.search(r"Sophon\s+(\S+)\s*$", line)
            chip = found.group(1) if found else None
        elif line.startswith("KernelVersion"):
            kernel = line.partition(":")[2].strip() or None
        elif line.startswith("HWVersion"):
            hw = line.partition(":")[2].strip() or None
        elif line.startswith("MCUVersion"):
            mcu = line.partition(":")[2].strip() or None
        elif match := _PACKAGE.match(line):
            packages[match.group("name")] = match.group("version")
    if sdk_line is None and not packages:
        raise FactError(f"not bm_version output: {snippet(text)}")
    return BmVersion(sdk, sdk_line, bm1688, packages, chip, kernel, hw, mcu)


def parse_libsophon(readlink: str, bm: BmVersion | None) -> str | None:
    """`/opt/sophon/libsophon-0.5.1` → "0.5.1" (as Sophgo's own tools read it), else bm_version's."""
    target = _first_line(readlink)
    if target:
        name = target.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("libsophon-") and name != "libsophon-current":
            return name[len("libsophon-") :]
    if bm is not None:
        return bm.packages.get("sophon-soc-libsophon") or bm.packages.get("sophon-libsophon")
    return None


def parse_total_mem(text: str) -> Layout:
    """Root part of the probe: `npu <bytes>` lines from debugfs total_mem (`?` when unreadable)."""
    sizes: dict[str, int] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] in HEAPS:
            if words[1] == "absent":  # ion has no such heap: deleted (memory_edit -vpu 0), i.e. 0 MiB
                sizes[words[0]] = 0
                continue
            if not words[1].isdigit():
                raise FactError(f"cannot read /sys/kernel/debug/ion/bm_{words[0]}_heap_dump/total_mem")
            sizes[words[0]] = int(words[1]) // MIB
            if sizes[words[0]] > MAX_PLAUSIBLE_DDR_MIB:
                raise FactError(
                    f"debugfs claims a {words[0]} heap of {sizes[words[0]]} MiB, more than any DDR"
                )
    layout = layout_of(sizes)
    if layout is None:
        raise FactError(f"heap sizes incomplete: {snippet(text)}")
    return layout


def parse_root(text: str) -> RootFacts:
    """The probe's root part: heaps from debugfs, optionally `memory_edit.sh -p`, and `exit=N`."""
    head, _, kit = text.partition(f"{MARK}memory_edit_p")
    exit_line = re.search(r"^exit=(\d+)\s*$", text, re.MULTILINE)
    if exit_line is None:
        raise FactError("the root part of the probe is truncated")
    body = head if kit else head[: head.rfind("exit=")]
    heaps: Layout | None = None
    error = None
    try:
        heaps = parse_total_mem(body)
    except FactError as exc:
        error = _sudo_problem(body) or exc.message
    report = None
    if kit:
        try:
            report = parse_memory_edit_p(kit[: kit.rfind("exit=")])
        except FactError as exc:
            error = error or exc.message
    return RootFacts(heaps, report, error)


def _refusal(sections: Mapping[str, str], root: RootFacts) -> sudo.SudoRefusal | None:
    """sudo's refusal: in the root part when it ran, else in the check a replayed root part is followed by."""
    if "sudo" in sections:
        check = sections["sudo"]
        return None if re.search(r"^exit=0\s*$", check, re.MULTILINE) else sudo.classify(check)
    return sudo.classify(sections.get("root", "")) if root.error else None


def _sudo_problem(text: str) -> str | None:
    refusal = sudo.classify(text)
    if refusal is not None:
        return sudo.describe(refusal)
    for line in text.splitlines():
        if line.startswith("sudo:"):
            return f"sudo failed ({line[5:].strip()})"
    return None


def parse_python(text: str) -> PythonFacts:
    """`python 3.8.18` and `sail ok` / `sail error ImportError: ...` lines."""
    version = None
    sail_ok = False
    sail_error: str | None = "python3 did not run"
    for line in text.splitlines():
        if line.startswith("python ") and re.fullmatch(r"\d+\.\d+\.\d+", line[7:].strip()):
            version, sail_error = line[7:].strip(), "no answer from `import sophon.sail`"
        elif line.startswith("sail ok"):
            sail_ok, sail_error = True, None
        elif line.startswith("sail error "):
            sail_error = line[len("sail error ") :].strip()
    return PythonFacts(version, sail_ok, sail_error)


def parse_meminfo(text: str) -> int | None:
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            words = line.split()
            if len(words) < 2 or not words[1].isdigit():
                raise FactError(f"bad MemTotal line: {line!r}")
            return int(words[1]) // 1024
    return None


def parse_df(text: str) -> dict[str, int | None]:
    """`<path> <df -Pk line>` per path → free MiB (None when the path does not exist)."""
    free: dict[str, int | None] = {}
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if len(words) == 1:
            free[words[0]] = None
        elif len(words) >= 7 and words[4].isdigit():
            free[words[0]] = int(words[4]) // 1024
        else:
            raise FactError(f"bad df line: {line!r}")
    return free


def parse_runtime(text: str) -> str | None:
    """`readlink .../runtime/current` → the version directory's name."""
    target = _first_line(text)
    return target.rstrip("/").rsplit("/", 1)[-1] if target else None


def parse_assets(text: str) -> tuple[Asset, ...]:
    assets = []
    for line in text.splitlines():
        state, _, path = line.partition(" ")
        parts = path.rstrip("/").split("/")
        if state in ("verified", "present") and len(parts) >= 2:
            assets.append(Asset(parts[-2], parts[-1], state == "verified"))
    return tuple(assets)


# ---------------------------------------------------------------------------------------------- versions


def version_tuple(text: str | None) -> tuple[int, ...] | None:
    """ "0.5.1-LTS" → (0, 5, 1); "V24.04.01" → (24, 4, 1); "v23.09 LTS-SP5" → (23, 9); None if no digits."""
    if not text:
        return None
    match = re.match(r"^[vV]?(\d+(?:\.\d+)*)", text.strip())
    return tuple(int(part) for part in match.group(1).split(".")) if match else None


# fixture name → parser, for tests/facts/<fact>/<case>.json
PARSERS = {
    "bm_version": parse_bm_version,
    "memory_edit_p": parse_memory_edit_p,
    "memory_edit_c": parse_memory_edit_c,
    "total_mem": parse_total_mem,
    "cpuinfo": parse_cpuinfo,
    "python": parse_python,
    "df": parse_df,
    "root": parse_root,
    "probe": parse_probe,
}
