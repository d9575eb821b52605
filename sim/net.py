"""The simulated fleet's network: one private /24 behind a bridge, reachable only from this machine.

    root ns:  sf{k}host 10.213.k.1/24  ── veth ──┐       + `unreachable 10.213.k.0/24 metric 4000`
    sf{k}hub: bridge br0 ─────────────────────────┤         (nothing for the subnet ever leaves the machine)
    sf{k}b{i}: eth0 10.213.k.(10+i)/24 ── veth ───┘

Addresses exist only inside namespaces the sim creates, plus the root-ns end of the host link.
"""

from __future__ import annotations

import contextlib
import fcntl
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from provision.errors import SimError

SUBNET_PREFIX = "10.213"


@dataclass(frozen=True)
class FleetNet:
    """Names and addresses of one fleet's network (fleet index k)."""

    k: int

    @property
    def hub(self) -> str:
        return f"sf{self.k}hub"

    @property
    def host_link(self) -> str:
        return f"sf{self.k}host"

    @property
    def subnet(self) -> str:
        return f"{SUBNET_PREFIX}.{self.k}.0/24"

    @property
    def host_address(self) -> str:
        return f"{SUBNET_PREFIX}.{self.k}.1"

    @property
    def mirror_address(self) -> str:
        return f"{SUBNET_PREFIX}.{self.k}.2"

    def box_ns(self, i: int) -> str:
        return f"sf{self.k}b{i}"

    def box_address(self, i: int) -> str:
        return f"{SUBNET_PREFIX}.{self.k}.{10 + i}"

    def service_ns(self, name: str) -> str:
        return f"sf{self.k}{name}"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SimError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def existing_namespaces() -> set[str]:
    out = ip("netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


ALLOCATION_LOCK = "/run/sophon-fleet-sim.lock"


@contextlib.contextmanager
def allocation_lock() -> Iterator[None]:
    """Fleets coming up at the same time (parallel test runs) must not pick the same subnet."""
    with open(ALLOCATION_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def free_fleet_index() -> int:
    """A random k whose hub namespace and subnet route are unused (random: a fleet just removed is not
    immediately reused, so checks that it left nothing behind cannot see its successor). Call it under
    `allocation_lock()` and create the hub before releasing the lock."""
    names = existing_namespaces()
    routes = ip("route", "show", "table", "all", check=False).stdout
    free = [
        k for k in range(1, 250) if FleetNet(k).hub not in names and f"{SUBNET_PREFIX}.{k}.0/" not in routes
    ]
    if not free:
        raise SimError("no free simulated subnet left (10.213.1-249.0/24 all in use): run `sim down`")
    return random.choice(free)


def create_hub(net: FleetNet) -> None:
    """Safety route first, then the hub with its bridge and the host link."""
    ip("route", "add", "unreachable", net.subnet, "metric", "4000")
    ip("netns", "add", net.hub)
    ip("-n", net.hub, "link", "add", "br0", "type", "bridge")
    ip("-n", net.hub, "link", "set", "br0", "up")
    ip("-n", net.hub, "link", "set", "lo", "up")
    ip("link", "add", net.host_link, "type", "veth", "peer", "name", "host", "netns", net.hub)
    ip("-n", net.hub, "link", "set", "host", "master", "br0", "up")
    ip("addr", "add", f"{net.host_address}/24", "dev", net.host_link)
    ip("link", "set", net.host_link, "up")


def attach(net: FleetNet, ns: str, address: str) -> None:
    """A namespace `ns` with eth0 at `address` on the fleet's bridge."""
    ip("netns", "add", ns)
    ip("-n", net.hub, "link", "add", ns, "type", "veth", "peer", "name", "eth0", "netns", ns)
    ip("-n", net.hub, "link", "set", ns, "master", "br0", "up")
    ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
    # a gratuitous ARP whenever eth0 comes up: its peers' stale entries for it are renewed (see set_link)
    subprocess.run(
        ["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.conf.eth0.arp_notify=1"], check=True
    )
    ip("-n", ns, "link", "set", "eth0", "up")
    ip("-n", ns, "link", "set", "lo", "up")


def set_link(net: FleetNet, ns: str, address: str, up: bool) -> None:
    """Cut or restore the link of namespace `ns` (its eth0 at `address`).

    A connection tried while the link was down leaves an ARP resolution running on its peer; one that runs
    out after the link is back fails the next connect with "No route to host" (measured: the controller's
    first SSH after a 35 s cut). Restoring the link therefore forgets the neighbours on both ends, as a real
    box's peers do once it announces itself, and the box announces itself too (arp_notify, set at attach)."""
    ip("-n", ns, "link", "set", "eth0", "up" if up else "down")
    if up:
        ip("neigh", "flush", "to", address, "dev", net.host_link, check=False)
        ip("-n", ns, "neigh", "flush", "dev", "eth0", check=False)


def set_rate(net: FleetNet, ns: str, mbit: int | None) -> None:
    """Limit the box's link both ways with tbf (None removes the limit)."""
    for where, dev in ((ns, "eth0"), (net.hub, ns)):
        subprocess.run(
            ["ip", "netns", "exec", where, "tc", "qdisc", "del", "dev", dev, "root"], capture_output=True
        )
        if mbit:
            burst = max(32, mbit * 4)  # KiB; enough for the rate at HZ=250..1000
            cmd = [
                "ip",
                "netns",
                "exec",
                where,
                "tc",
                "qdisc",
                "add",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                f"{mbit}mbit",
                "burst",
                f"{burst}kb",
                "latency",
                "50ms",
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SimError(f"tc on {ns}: {proc.stderr.strip()}")


def destroy(net: FleetNet, namespaces: list[str]) -> list[str]:
    """Remove the namespaces, the host link and the safety route; returns what could not be removed."""
    left: list[str] = []
    present = existing_namespaces()
    for ns in [*namespaces, net.hub]:
        if ns in present and ip("netns", "del", ns, check=False).returncode != 0:
            left.append(f"netns {ns}")
    if ip("link", "show", net.host_link, check=False).returncode == 0:
        ip("link", "del", net.host_link, check=False)
    while ip("route", "del", "unreachable", net.subnet, "metric", "4000", check=False).returncode == 0:
        pass
    if net.subnet.split("/")[0] in ip("route", "show", "table", "all", check=False).stdout:
        left.append(f"route {net.subnet}")
    return left
