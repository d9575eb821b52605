"""Preflight: is each box ready for ChatGLM4-9B, and if not, why and what to do.

`judge(facts, manifest, ...)` is pure (facts → Verdict); `run_preflight` probes every host once (one round
trip each, in parallel) and judges it. Verdicts, worst first:

    unreachable          no SSH (refused, timeout, host key, authentication)
    error                the probe ran but its output could not be used
    blocked              wrong chip, libsophon/SDK too old, no Python 3.8, /data too small, heaps unreadable,
                         or a max too small for any variant
    needs-memory-layout  the ion heaps are below the variant's threshold; a layout is suggested from the
                         box's own max (memory_edit -p), or from a labelled assumption when it has no kit
    ready-int8/int4      the npu + vpp heaps (what the runtime allocates from) meet the variant's threshold
                         (models/glm4-9b.yaml: int8 10045, int4 5860 MiB, GLM-4-9B's footprint as libbmrt
                         counts it; the sample README's 7168/4608 of npu + vpu + vpp are too low)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from provision.errors import ConnectError, FleetError
from provision.facts.parse import Facts, gather, version_tuple
from provision.fleet import DEFAULT_FORKS, run_fleet
from provision.inventory.hosts import Host
from provision.manifest import Manifest
from provision.memory.layout import ASSUMED_MAX_16GB_BM1684X, Layout, layout_json, plan_layout
from provision.ssh.sudo import SudoRefusal
from provision.ssh.sudo import describe as sudo_describe
from provision.ssh.transport import Connector

SCHEMA = "sophon-fleet/preflight/v1"
MIB = 1024 * 1024
# With no known file sizes, /data must still have room to unpack anything at all.
MIN_DATA_FREE_MIB = 256
# Sizes estimated from the model's parameters (~8.2 B in 40 blocks plus an F16 embedding: ~6 GB int4,
# ~10 GB int8), used only in a warning.
ESTIMATED_BMODEL_MIB = {"int4": 6 * 1024, "int8": 10 * 1024}


class Status(str, Enum):
    READY_INT8 = "ready-int8"
    READY_INT4 = "ready-int4"
    NEEDS_LAYOUT = "needs-memory-layout"
    BLOCKED = "blocked"
    ERROR = "error"
    UNREACHABLE = "unreachable"

    @property
    def ready(self) -> bool:
        return self in (Status.READY_INT8, Status.READY_INT4)


@dataclass(frozen=True)
class Reason:
    """A stable `code` for machines and a `message` for people."""

    code: str
    message: str


@dataclass(frozen=True)
class Suggestion:
    """A layout to apply (MiB) and where the max it was computed from came from."""

    layout: Layout
    variant: str
    max: Layout
    max_source: str  # "memory_edit" (the box's own -p) | "assumed" (16 GB BM1684X, v2.10+)


@dataclass(frozen=True)
class Verdict:
    host: Host
    status: Status
    variant: str | None  # ready for / to be laid out for
    reasons: tuple[Reason, ...] = ()
    warnings: tuple[Reason, ...] = ()
    suggestion: Suggestion | None = None
    facts: Facts | None = None
    hint: str | None = None


@dataclass(frozen=True)
class PreflightReport:
    model: str
    requested: str
    verdicts: tuple[Verdict, ...]
    seconds: float

    def count(self, status: Status) -> int:
        return sum(1 for v in self.verdicts if v.status == status)

    @property
    def worst(self) -> str:
        """ "unreachable" > "not-ready" > "ready" (drives the exit code: 4 / 3 / 0)."""
        if any(v.status == Status.UNREACHABLE for v in self.verdicts):
            return "unreachable"
        if any(not v.status.ready for v in self.verdicts):
            return "not-ready"
        return "ready"


# ---------------------------------------------------------------------------------------------- running


def run_preflight(
    hosts: Sequence[Host],
    connector: Connector,
    manifest: Manifest,
    *,
    variant: str = "auto",
    file_sizes: Mapping[str, int] | None = None,
    forks: int = DEFAULT_FORKS,
    fresh: bool = False,
) -> PreflightReport:
    """Probe every host once (in parallel) and judge it; unreachable boxes never stop the others.

    `fresh`: ask every box everything again (sudo included) instead of replaying what it kept from this boot.
    """
    started = time.monotonic()
    result = run_fleet(hosts, lambda host: gather(connector.transport(host), fresh=fresh), forks=forks)
    verdicts = []
    for outcome in result:
        if outcome.error is not None:
            verdicts.append(failed_verdict(outcome.host, outcome.error))
        else:
            assert outcome.value is not None
            wanted = outcome.host.variant if variant == "auto" and outcome.host.variant else variant
            verdicts.append(
                judge(outcome.host, outcome.value, manifest, variant=wanted, file_sizes=file_sizes)
            )
    return PreflightReport(manifest.model, variant, tuple(verdicts), time.monotonic() - started)


def failed_verdict(host: Host, error: FleetError) -> Verdict:
    status = Status.UNREACHABLE if isinstance(error, ConnectError) else Status.ERROR
    code = "unreachable" if status == Status.UNREACHABLE else "probe-failed"
    return Verdict(host, status, None, (Reason(code, error.message),), hint=error.hint)


# ---------------------------------------------------------------------------------------------- judging


def judge(
    host: Host,
    facts: Facts,
    manifest: Manifest,
    *,
    variant: str = "auto",
    file_sizes: Mapping[str, int] | None = None,
) -> Verdict:
    """The verdict for one box from its facts (pure). `file_sizes`: known bytes per manifest file id."""
    sizes = dict(file_sizes or {})
    blockers = _platform_blockers(facts, manifest)
    warnings = _platform_warnings(facts, manifest)
    if facts.sudo_refusal is not None:
        refusal = SudoRefusal(facts.sudo_refusal)
        blockers.append(Reason(f"sudo-{refusal.value}", f"{sudo_describe(refusal)}"))
    if facts.heaps_now is None:
        if facts.sudo_refusal is None:
            blockers.append(
                Reason("heaps-unknown", "cannot read the ion heap sizes (" + _heaps_problem(facts) + ")")
            )
        return _verdict(host, facts, blockers, warnings, [], None, None)
    maximum, max_source = _max_of(facts)
    chosen, memory_reasons, suggestion = _memory(facts.heaps_now, maximum, max_source, manifest, variant)
    if max_source == "assumed" and memory_reasons:
        warnings.append(Reason("max-unknown", _MAX_UNKNOWN))
    if memory_reasons and suggestion is None:  # no layout within this box's max holds the variant
        blockers, memory_reasons = blockers + memory_reasons, []
    blockers += _data_blockers(facts, manifest, chosen, sizes)
    warnings += _data_warnings(facts, manifest, chosen, sizes)
    warnings += _bmodel_warnings(facts.heaps_now, suggestion, manifest, chosen, sizes)
    return _verdict(host, facts, blockers, warnings, memory_reasons, suggestion, chosen)


def _verdict(
    host: Host,
    facts: Facts,
    blockers: list[Reason],
    warnings: list[Reason],
    memory_reasons: list[Reason],
    suggestion: Suggestion | None,
    chosen: str | None,
) -> Verdict:
    if blockers:
        status = Status.BLOCKED
    elif memory_reasons:
        status = Status.NEEDS_LAYOUT
    else:
        status = Status(f"ready-{chosen}")
    reasons = (*blockers, *memory_reasons)
    hint = None
    if status is Status.NEEDS_LAYOUT and suggestion is not None:
        hint = (
            f"sophon-fleet memory apply --limit {host.name} --variant {suggestion.variant} "
            f"(with this run's -i) plans the layout from the box's own max, reboots it and verifies"
        )
    return Verdict(host, status, chosen, reasons, tuple(warnings), suggestion, facts, hint=hint)


def _platform_blockers(facts: Facts, manifest: Manifest) -> list[Reason]:
    reasons = []
    chip = facts.chip
    if chip is None:
        reasons.append(
            Reason("chip-unknown", "cannot tell the chip (no model name in /proc/cpuinfo, no dts name)")
        )
    elif chip != manifest.chip:
        reasons.append(Reason("wrong-chip", f"chip is {chip}; {manifest.model} needs {manifest.chip}"))
    have, need = version_tuple(facts.libsophon), version_tuple(manifest.min_libsophon)
    if have is None:
        reasons.append(
            Reason("no-libsophon", "no libsophon found (/opt/sophon/libsophon-current, bm_version)")
        )
    elif need and have < need:
        sdk = f" (SDK {facts.sdk})" if facts.sdk else ""
        reasons.append(
            Reason(
                "old-sdk",
                f"libsophon {facts.libsophon}{sdk} is older than {manifest.min_libsophon} "
                f"(SDK {manifest.min_sdk}); flash a newer SDK",
            )
        )
    python = version_tuple(facts.python.version)
    wanted = version_tuple(manifest.min_python) or (3, 8)
    if python is None:
        reasons.append(Reason("no-python", f"no python3 on the box (Python {manifest.min_python} needed)"))
    elif python[:2] < wanted[:2]:
        reasons.append(
            Reason("old-python", f"python3 is {facts.python.version}; {manifest.min_python} needed")
        )
    return reasons


def _platform_warnings(facts: Facts, manifest: Manifest) -> list[Reason]:
    warnings = []
    have_sdk, need_sdk = version_tuple(facts.sdk), version_tuple(manifest.min_sdk)
    libsophon_ok = (version_tuple(facts.libsophon) or ()) >= (version_tuple(manifest.min_libsophon) or ())
    bm1688 = facts.bm_version is not None and facts.bm_version.bm1688_style
    if have_sdk and need_sdk and have_sdk < need_sdk and libsophon_ok and not bm1688:
        warnings.append(
            Reason(
                "sdk-line",
                f"SDK {facts.sdk} is older than {manifest.min_sdk}, but its libsophon is new enough",
            )
        )
    python = version_tuple(facts.python.version)
    wanted = version_tuple(manifest.min_python) or (3, 8)
    if python and python[:2] > wanted[:2]:
        warnings.append(
            Reason(
                "python-newer",
                f"python3 is {facts.python.version}; the SAIL wheel is built for {manifest.min_python}",
            )
        )
    # a runtime deployed with its own SAIL wheel is named `<version>-<id>-sail` (provision/runtime/deploy.py)
    runtime_has_sail = bool(facts.runtime and facts.runtime.endswith("-sail"))
    if facts.python.version and not facts.python.sail_ok and not runtime_has_sail:
        warnings.append(
            Reason(
                "no-sail",
                f"`import sophon.sail` fails ({facts.python.sail_error}); deploy installs the SAIL wheel",
            )
        )
    return warnings


_MAX_UNKNOWN = (
    "max heap sizes unknown: no memory_edit kit on the box; the suggestion assumes a 16 GB BM1684X with "
    "memory_edit v2.10+ (max 7615/3071/4096); uploading the kit and running `memory_edit.sh -p` "
    "(the memory-layout step does this) reads the real max"
)


def _heaps_problem(facts: Facts) -> str:
    for problem in facts.problems:
        if problem.startswith("heaps:"):
            return problem[len("heaps:") :].strip()
    return "no debugfs total_mem and no memory_edit kit"


def _max_of(facts: Facts) -> tuple[Layout, str]:
    if facts.heaps_max is not None:
        return facts.heaps_max, "memory_edit"
    return ASSUMED_MAX_16GB_BM1684X, "assumed"


def _memory(
    now: Layout, maximum: Layout, max_source: str, manifest: Manifest, variant: str
) -> tuple[str, list[Reason], Suggestion | None]:
    """(variant, why the heaps are not enough ([] when ready), the layout to suggest (None if none fits))."""
    candidates = manifest.by_preference if variant == "auto" else (manifest.variant(variant),)
    for candidate in candidates:
        if now.usable >= candidate.min_heap_mib:
            return candidate.name, [], None
    for candidate in candidates:
        planned = plan_layout(manifest.recommended_layout, maximum, candidate.min_heap_mib)
        if planned is not None:
            reason = Reason(
                "heaps-too-small",
                f"ion heaps {now}: npu+vpp {now.usable} MiB, below the "
                f"{candidate.min_heap_mib} MiB {candidate.name} needs",
            )
            return candidate.name, [reason], Suggestion(planned, candidate.name, maximum, max_source)
    smallest = candidates[-1]
    reason = Reason(
        "max-too-small",
        f"even the max heaps {maximum} ({max_source}) give npu+vpp {maximum.usable} MiB, below the "
        f"{smallest.min_heap_mib} MiB {smallest.name} needs",
    )
    return smallest.name, [reason], None


def _data_blockers(facts: Facts, manifest: Manifest, variant: str, sizes: dict[str, int]) -> list[Reason]:
    free = facts.disk_free_mib.get("/data")
    if free is None:
        return [Reason("no-data", "no /data on the box (the model files go to /data/sophon-fleet)")]
    if any(a.variant == variant and a.verified for a in facts.assets):
        return []
    files = manifest.variant(variant).files
    known = [sizes.get(f.id, f.pinned.size) for f in files]
    need = sum(-(-s // MIB) for s in known if s is not None) if all(s is not None for s in known) else None
    need_mib = need if need is not None else MIN_DATA_FREE_MIB
    if free < need_mib:
        what = (
            f"the {variant} files need {need_mib} MiB"
            if need is not None
            else f"at least {need_mib} MiB is needed"
        )
        return [Reason("data-too-small", f"/data has {free} MiB free; {what}")]
    return []


def _data_warnings(facts: Facts, manifest: Manifest, variant: str, sizes: dict[str, int]) -> list[Reason]:
    bmodel = manifest.variant(variant).bmodel
    free = facts.disk_free_mib.get("/data")
    estimate = ESTIMATED_BMODEL_MIB.get(variant)
    if sizes.get(bmodel.id, bmodel.pinned.size) is not None or free is None or estimate is None:
        return []
    if any(a.variant == variant for a in facts.assets) or free >= estimate:
        return []
    return [
        Reason(
            "data-maybe-small",
            f"/data has {free} MiB free; the {variant} bmodel's size is not pinned yet (no lock), but it is "
            f"estimated at ~{estimate // 1024} GiB from the model's parameters",
        )
    ]


def _bmodel_warnings(
    now: Layout, suggestion: Suggestion | None, manifest: Manifest, variant: str, sizes: dict[str, int]
) -> list[Reason]:
    bmodel = manifest.variant(variant).bmodel
    size = sizes.get(bmodel.id, bmodel.pinned.size)
    if size is None:
        return []
    size_mib = -(-size // MIB)
    need = size_mib + manifest.kv_cache_mib
    heaps = suggestion.layout if suggestion else now
    if heaps.usable >= need:
        return []
    return [
        Reason(
            "heaps-below-bmodel",
            f"the {variant} bmodel is {size_mib} MiB; with {manifest.kv_cache_mib} MiB of KV cache it "
            f"needs {need} MiB, more than the {heaps.usable} MiB of npu+vpp heaps (the manifest's "
            f"{manifest.variant(variant).min_heap_mib} MiB threshold is below what this file needs)",
        )
    ]


# ---------------------------------------------------------------------------------------------- JSON


def facts_json(facts: Facts) -> dict[str, Any]:
    """The facts as the stable JSON shape documented in the README."""
    bm = facts.bm_version
    return {
        "hostname": facts.hostname,
        "boot_id": facts.boot_id,
        "arch": facts.arch,
        "kernel": {"release": facts.kernel_release, "version": facts.kernel_version},
        "mode": facts.mode,
        "chip": facts.chip,
        "cpu_model": facts.cpu_model,
        "dts": facts.dts,
        "sdk": facts.sdk,
        "bm_version": None
        if bm is None
        else {
            "sdk_line": bm.sdk_line,
            "packages": dict(bm.packages),
            "chip": bm.chip,
            "kernel": bm.kernel,
            "hw_version": bm.hw_version,
            "mcu_version": bm.mcu_version,
        },
        "libsophon": facts.libsophon,
        "driver": facts.driver,
        "python": facts.python.version,
        "sail": {"ok": facts.python.sail_ok, "error": facts.python.sail_error},
        "mem_total_mib": facts.mem_total_mib,
        "disk_free_mib": dict(facts.disk_free_mib),
        "heaps": {
            "now": layout_json(facts.heaps_now),
            "max": layout_json(facts.heaps_max),
            "source": facts.heaps_source,
            "memory_edit_version": facts.memory_edit.version if facts.memory_edit else None,
        },
        "memory_edit_kit": facts.kit_path,
        "runtime": facts.runtime,
        "assets": [{"model": a.model, "variant": a.variant, "verified": a.verified} for a in facts.assets],
        "problems": list(facts.problems),
        "replayed": list(facts.replayed),
        "sudo": facts.sudo_refusal or "ok",
    }


def verdict_json(verdict: Verdict) -> dict[str, Any]:
    host = verdict.host
    suggestion = verdict.suggestion
    return {
        "host": host.name,
        "address": host.address,
        "port": host.port,
        "status": verdict.status.value,
        "ready": verdict.status.ready,
        "variant": verdict.variant,
        "reasons": [{"code": r.code, "message": r.message} for r in verdict.reasons],
        "warnings": [{"code": r.code, "message": r.message} for r in verdict.warnings],
        "hint": verdict.hint,
        "suggested_layout": None
        if suggestion is None
        else {
            **(layout_json(suggestion.layout) or {}),
            "variant": suggestion.variant,
            "max": layout_json(suggestion.max),
            "max_source": suggestion.max_source,
        },
        "facts": facts_json(verdict.facts) if verdict.facts else None,
    }


def report_json(report: PreflightReport) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "model": report.model,
        "requested_variant": report.requested,
        "result": report.worst,
        "seconds": round(report.seconds, 3),
        "summary": {s.value: report.count(s) for s in Status},
        "hosts": [verdict_json(v) for v in report.verdicts],
    }
