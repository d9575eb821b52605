"""Fixtures for integration tests against a simulated fleet (root; Linux namespaces)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest

from sim.fleet import Fleet

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="the simulated fleet needs root (namespaces, mounts)"
)


@pytest.fixture
def sim_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Fleet]]:
    """`sim_fleet(["se7-factory", ...], mirror=True)` brings a fleet up; every fleet is torn down after
    the test, with a check that nothing of it is left."""
    fleets: list[Fleet] = []

    def make(profiles: list[str], **options: object) -> Fleet:
        fleet = Fleet.up(tmp_path_factory.mktemp("fleet"), profiles, **options)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        assert fleet.down() == [], "the simulated fleet left something behind"
        assert_nothing_left(fleet)


def assert_nothing_left(fleet: Fleet) -> None:
    """No namespace, route, mount or process of the fleet survives `down`."""
    k = fleet.state.k
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    ours = re.compile(rf"^sf{k}(hub|b\d+|mirror)(\s|$)")
    assert not [line for line in namespaces.splitlines() if ours.match(line)]
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    assert f"10.213.{k}.0/" not in routes
    assert subprocess.run(["ip", "link", "show", f"sf{k}host"], capture_output=True).returncode != 0
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(fleet.state.dir) not in mounts
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert str(fleet.state.dir).encode() not in cmdline, f"process {pid} of the fleet is still running"
    assert not fleet.state.dir.exists()
    for root in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        for record in fleet.state.boxes:  # the cgroups the boxes' systemd made
            assert not os.path.exists(f"{root}/sophon-sim/{record.netns}"), f"cgroup of {record.name} left"


def connect(fleet: Fleet, name: str, timeout: float = 5.0) -> paramiko.SSHClient:
    """Key login as linaro, with the fleet's pinned host keys (unknown keys are rejected)."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(fleet.state.dir / "known_hosts"))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        fleet.state.box(name).address,
        username="linaro",
        key_filename=str(fleet.state.dir / "operator_key"),
        timeout=timeout,
        banner_timeout=timeout,
        auth_timeout=timeout,
        look_for_keys=False,
        allow_agent=False,
    )
    return client


def run(
    client: paramiko.SSHClient, command: str, stdin: str | None = None, timeout: float = 10.0
) -> tuple[int, str]:
    """Run a command; returns (exit status, stdout + stderr)."""
    chan_in, chan_out, chan_err = client.exec_command(command, timeout=timeout)
    if stdin is not None:
        chan_in.write(stdin)
        chan_in.channel.shutdown_write()
    out = chan_out.read().decode() + chan_err.read().decode()
    return chan_out.channel.recv_exit_status(), out


def sudo(client: paramiko.SSHClient, command: str) -> tuple[int, str]:
    return run(client, f"sudo -S -p '' {command}", stdin="linaro\n")
