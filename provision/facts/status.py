"""`status`: what each box is doing now, in one cheap round trip beside the (cached) probe.

Uptime from /proc/uptime, heaps now (the probe's) and in use (debugfs `alloc_mem`, decimal bytes, root
only; FACTS.md §ION), the runtime `current` points at and the variant its deploy marker names, and the
state of the chat service unit when the box has systemd.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from provision.boxpaths import RUNTIME_DIR
from provision.errors import FactError
from provision.facts.parse import Facts, gather
from provision.memory.layout import HEAPS, MIB, Layout, layout_json
from provision.ssh.transport import Transport

SERVICE = "sophon-chat.service"
MARKER = ".deployed"
ALLOC = "/sys/kernel/debug/ion/bm_{}_heap_dump/alloc_mem"

_LIVE = (
    'read -r up _ < /proc/uptime; echo "uptime $up"; '
    f'm={RUNTIME_DIR}/current/{MARKER}; [ -r "$m" ] && {{ printf "marker "; tr -d "\\n" < "$m"; echo; }}; '
    f'if command -v systemctl >/dev/null; then echo "service $(systemctl is-active {SERVICE} 2>/dev/null)"; '
    "else echo 'service none'; fi"
)
_IN_USE = "; ".join(f'{{ read -r v < {ALLOC.format(k)} && echo "{k} $v"; }} 2>/dev/null' for k in HEAPS)


@dataclass(frozen=True)
class BoxStatus:
    """One box now. None: unknown (not readable, not deployed)."""

    host: str
    uptime_s: float | None
    heaps: Layout | None
    in_use: Layout | None
    runtime: str | None
    variant: str | None
    service: str | None  # active | inactive | failed | ... ; None: no systemd or no unit
    problems: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "reachable": True,
            "uptime_s": self.uptime_s,
            "heaps": layout_json(self.heaps),
            "heaps_in_use": layout_json(self.in_use),
            "runtime": self.runtime,
            "variant": self.variant,
            "service": self.service,
            "problems": list(self.problems),
        }


def box_status(transport: Transport) -> BoxStatus:
    """The status of one box. Raises ConnectError (unreachable), RemoteError."""
    facts: Facts = gather(transport)
    live = parse_live(transport.run(_LIVE, check=False).stdout)
    in_use = None
    if facts.heaps_now is not None and facts.sudo_refusal is None:
        in_use = parse_in_use(transport.run(_IN_USE, sudo=True, check=False).stdout)
    return BoxStatus(
        host=transport.host.name,
        uptime_s=live.get("uptime"),
        heaps=facts.heaps_now,
        in_use=in_use,
        runtime=facts.runtime,
        variant=live.get("variant"),
        service=live.get("service"),
        problems=facts.problems,
    )


def parse_live(text: str) -> dict[str, Any]:
    """`uptime 1234.5`, `marker {json}`, `service active|inactive|...|none` → values (pure)."""
    found: dict[str, Any] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "uptime":
            try:
                found["uptime"] = float(value)
            except ValueError:
                raise FactError(f"bad /proc/uptime: {value!r}") from None
        elif key == "marker":
            try:
                found["variant"] = json.loads(value).get("variant")
            except (ValueError, AttributeError):
                found["variant"] = None
        elif key == "service":
            found["service"] = None if value.strip() in ("", "none", "unknown") else value.strip()
    return found


def parse_in_use(text: str) -> Layout | None:
    """`npu <bytes>` lines from alloc_mem → MiB in use (None when a heap is missing)."""
    sizes = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] in HEAPS and words[1].isdigit():
            sizes[words[0]] = int(words[1]) // MIB
    return Layout(*(sizes[k] for k in HEAPS)) if all(k in sizes for k in HEAPS) else None


def format_uptime(seconds: float | None) -> str:
    """`3d 4h`, `2h 05m`, `41s`."""
    if seconds is None:
        return "-"
    s = int(seconds)
    days, hours, minutes = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {s % 60:02d}s" if minutes else f"{s}s"
