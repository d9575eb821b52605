"""`assets push` over an inventory: choose each box's variant, then push over the SSH transport.

    results = push_to_hosts(inventory.hosts, connector, manifest, variant="auto", cache=..., lock=...)

`variant="auto"` runs preflight (one probe per box) and gives each box the variant its verdict names
(ready-int8 / ready-int4, or the one a memory layout is planned for); blocked and unreachable boxes get
their verdict as an error and nothing is sent to them. The transfer itself is `push.push_fleet`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from provision.assets.cache import Cache
from provision.assets.pins import Pins
from provision.assets.push import DEFAULT_ROOT, BoxPush, BoxTarget, PushEvent, push_fleet
from provision.errors import ConnectError, FleetError, NotReadyError
from provision.facts.preflight import run_preflight
from provision.inventory.hosts import Host
from provision.manifest import Manifest
from provision.ssh.channels import transport_opener
from provision.ssh.transport import Connector

PUSHABLE = ("ready-int8", "ready-int4", "needs-memory-layout")


def choose_variants(
    hosts: Sequence[Host], connector: Connector, manifest: Manifest, variant: str, *, lock: Pins, forks: int
) -> tuple[dict[str, str], dict[str, FleetError]]:
    """host -> variant to push, and host -> why nothing is pushed there (auto: from preflight)."""
    if variant != "auto":
        manifest.variant(variant)  # a ConfigError naming the known variants
        return {h.name: h.variant or variant for h in hosts}, {}
    sizes = {fid: entry.size for fid, entry in lock.entries.items()}
    report = run_preflight(hosts, connector, manifest, variant="auto", file_sizes=sizes, forks=forks)
    chosen: dict[str, str] = {}
    refused: dict[str, FleetError] = {}
    for verdict in report.verdicts:
        name, status = verdict.host.name, verdict.status.value
        why = "; ".join(r.message for r in verdict.reasons) or status
        if status in PUSHABLE and verdict.variant:
            chosen[name] = verdict.variant
        elif status == "unreachable":
            refused[name] = ConnectError(f"{name}: {why}", hint=verdict.hint)
        else:
            refused[name] = NotReadyError(f"{name}: {status}: {why}", hint=verdict.hint)
    return chosen, refused


def push_to_hosts(
    hosts: Sequence[Host],
    connector: Connector,
    manifest: Manifest,
    *,
    variant: str,
    cache: Cache,
    lock: Pins,
    mirror: str | None = None,
    reverify: bool = False,
    max_parallel: int = 8,
    root: str = DEFAULT_ROOT,
    progress: Callable[[PushEvent], None] = lambda _e: None,
    dry_run: bool = False,
    cancel: threading.Event | None = None,
) -> tuple[dict[str, str], dict[str, BoxPush | FleetError]]:
    """Push every host its variant; returns (host -> variant, host -> result or error), in host order.

    Raises:
        ConfigError / IntegrityError / FleetError: from planning (a lock mismatch, files not pulled):
        nothing was sent to any box.
    """
    chosen, refused = choose_variants(hosts, connector, manifest, variant, lock=lock, forks=max_parallel)
    targets = [
        BoxTarget(h.name, transport_opener(connector.transport(h)), chosen[h.name])
        for h in hosts
        if h.name in chosen
    ]
    results: dict[str, BoxPush | FleetError] = dict(refused)
    if targets:
        results |= push_fleet(
            manifest,
            targets,
            cache=cache,
            lock=lock,
            root=root,
            mirror=mirror,
            reverify=reverify,
            max_parallel=max_parallel,
            progress=progress,
            dry_run=dry_run,
            cancel=cancel,
        )
    return chosen, {h.name: results[h.name] for h in hosts}
