"""`doctor HOST`: the support block Sophgo maintainers ask for, as copy-pasteable text or JSON."""

from __future__ import annotations

from typing import Any

from provision.facts.parse import Facts
from provision.facts.preflight import SCHEMA as PREFLIGHT_SCHEMA
from provision.facts.preflight import Verdict, facts_json, verdict_json
from provision.inventory.hosts import Host
from provision.memory.layout import Layout

SCHEMA = "sophon-fleet/doctor/v1"


def _layout(layout: Layout | None) -> str:
    if layout is None:
        return "unknown"
    return f"{layout} MiB (npu/vpu/vpp), npu+vpp {layout.usable} MiB, total {layout.total} MiB"


def support_block(host: Host, facts: Facts, verdict: Verdict) -> str:
    """Plain text, one `key: value` per line, bm_version verbatim: paste it into an issue or a forum post."""
    bm = facts.bm_version
    max_text = _layout(facts.heaps_max) if facts.heaps_max else _max_unknown(facts)
    disks = ", ".join(
        f"{path} {'-' if free is None else f'{free} MiB'}" for path, free in facts.disk_free_mib.items()
    )
    lines = [
        f"sophon-fleet doctor: {host.name} ({host.target})",
        f"hostname:     {facts.hostname or '?'}",
        f"mode:         {facts.mode}",
        f"chip:         {facts.chip or '?'} (cpuinfo: {facts.cpu_model or '?'}; dts: {facts.dts or '?'})",
        f"arch:         {facts.arch or '?'}",
        f"SDK:          {facts.sdk or '?'}",
        f"libsophon:    {facts.libsophon or '?'}",
        f"driver:       {facts.driver or 'n/a (SoC: built into the kernel)'}",
        f"kernel:       {facts.kernel_release or '?'} {facts.kernel_version or ''}".rstrip(),
        f"python3:      {facts.python.version or 'missing'}",
        f"sophon.sail:  {'ok' if facts.python.sail_ok else facts.python.sail_error}",
        f"memory:       {facts.mem_total_mib or '?'} MiB for Linux",
        f"heaps now:    {_layout(facts.heaps_now)} [{facts.heaps_source or 'unread'}]",
        f"heaps max:    {max_text}",
        f"memory_edit:  {facts.kit_path or 'none'}"
        + (f" (v{facts.memory_edit.version})" if facts.memory_edit and facts.memory_edit.version else ""),
        f"disk free:    {disks or '?'}",
        f"runtime:      {facts.runtime or 'not deployed'}",
        "assets:       "
        + (
            ", ".join(
                f"{a.model}/{a.variant} ({'verified' if a.verified else 'unverified'})" for a in facts.assets
            )
            or "none"
        ),
        f"boot_id:      {facts.boot_id or '?'}",
        f"verdict:      {verdict.status.value}" + (f" ({verdict.variant})" if verdict.variant else ""),
    ]
    lines += [f"  - {reason.message}" for reason in verdict.reasons]
    lines += [f"  ! {warning.message}" for warning in verdict.warnings]
    lines += [f"problem:      {problem}" for problem in facts.problems]
    lines += (
        ["bm_version:", *(f"  {line}" for line in _bm_lines(facts))] if bm else ["bm_version:   not found"]
    )
    return "\n".join(lines)


def _max_unknown(facts: Facts) -> str:
    if not facts.kit_path:
        return "unknown (no memory_edit kit on the box; `memory_edit.sh -p` prints it)"
    if facts.sudo_refusal is not None:
        return f"unknown ({facts.kit_path} is there, but `memory_edit.sh -p` needs root and sudo refused)"
    return f"unknown (`{facts.kit_path} -p` printed no max sizes; see the problems below)"


def _bm_lines(facts: Facts) -> list[str]:
    bm = facts.bm_version
    assert bm is not None
    lines = [bm.sdk_line] if bm.sdk_line else []
    lines += [f"{name} : {version}" for name, version in bm.packages.items()]
    if bm.kernel:
        lines.append(f"KernelVersion : {bm.kernel}")
    if bm.chip:
        lines.append(f"U-Boot chip : {bm.chip}")
    if bm.hw_version:
        lines.append(f"HWVersion: {bm.hw_version}")
    if bm.mcu_version:
        lines.append(f"MCUVersion: {bm.mcu_version}")
    return lines


def doctor_json(host: Host, facts: Facts, verdict: Verdict) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "host": host.public(),
        "facts": facts_json(facts),
        "verdict": {k: v for k, v in verdict_json(verdict).items() if k != "facts"},
        "verdict_schema": PREFLIGHT_SCHEMA,
    }
