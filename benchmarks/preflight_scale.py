"""preflight on 1, 16 and 32 simulated boxes against a bare paramiko floor measured in the same run.

SSH handshakes are CPU-bound on a 2-core machine, so absolute times mean little; the ratio to a floor measured
side by side does. Two floors, both a thread pool of plain paramiko clients (one per box, all at once):
  - `floor(true)`: connect + key auth + `true` (the cheapest command a box can run);
  - `floor(probe)`: connect + key auth + the same probe script preflight runs (same facts, one round trip),
    i.e. everything preflight does except sophon-fleet's own code (inventory, transport, parsing, judging,
    rendering).
preflight is timed in-process (inventory load → connect → probe → parse → judge → JSON and table render),
fresh connections every run. Target: within 1.3x of the floor at 16 and 32 boxes and at 1 box.

Boxes keep facts that only change with a reboot, a package, the boot image or the kit
(provision/facts/probe.py), so a probe after the first of a boot forks ~3 processes on the box.
`--fresh` (the first probe of a boot, or
`preflight --fresh`: sudo, bm_version, `import sophon.sail` again) is printed too, for information.

Run as root:  .venv/bin/python benchmarks/preflight_scale.py [--sizes 1,16,32] [--runs 5]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko
from rich.console import Console

from provision.cli.output import Output
from provision.cli.preflight import render
from provision.facts.preflight import report_json, run_preflight
from provision.facts.probe import probe_script
from provision.inventory.hosts import Host, load_inventory
from provision.manifest import load_manifest
from provision.ssh.transport import Connector, Trust
from sim.fleet import Fleet

PROFILES = ["se7-factory", "se7-ready-int8", "se7-small", "se7-int4-only"]


def bare_run(host: Host, known_hosts: str, command: str, password: str | None) -> str:
    client = paramiko.SSHClient()
    client.load_host_keys(known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        host.address,
        username=host.user,
        key_filename=list(host.keys),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    try:
        stdin, stdout, _ = client.exec_command(command)
        try:  # a probe replaying this boot's root facts exits without reading the password
            if password is not None:
                stdin.write(password + "\n")
            stdin.channel.shutdown_write()
        except OSError:
            pass
        out = stdout.read().decode()
        stdout.channel.recv_exit_status()
        return out
    finally:
        client.close()


def floor(hosts: list[Host], known_hosts: str, command: str, password: str | None) -> float:
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        list(pool.map(lambda h: bare_run(h, known_hosts, command, password), hosts))
    return time.monotonic() - started


def preflight(inventory: Path, limit: str, home: Path, fresh: bool = False) -> float:
    started = time.monotonic()
    inv = load_inventory([inventory], limit=limit)
    manifest = load_manifest("glm4-9b")
    with Connector(Trust(home / "known_hosts")) as connector:
        report = run_preflight(inv.hosts, connector, manifest, forks=len(inv.hosts), fresh=fresh)
    report_json(report)
    render(Output(console=Console(file=io.StringIO(), width=160), err=Console(file=io.StringIO())), report)
    elapsed = time.monotonic() - started
    bad = [v for v in report.verdicts if v.status.value in ("unreachable", "error")]
    assert not bad, [(v.host.name, v.reasons) for v in bad]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,16,32")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        os.environ["SOPHON_FLEET_HOME"] = str(home)
        fleet = Fleet.up(Path(tmp) / "fleet", [PROFILES[i % len(PROFILES)] for i in range(max(sizes))])
        try:
            inventory = fleet.inventory_path
            every = load_inventory([inventory]).hosts
            known_hosts = every[0].known_hosts[0]
            password = every[0].become_password.resolve() if every[0].become_password else None
            probe = f"sh -c {__import__('shlex').quote(probe_script(with_password=password is not None))}"
            preflight(inventory, every[0].name, home)  # warm-up: imports, first connections
            print(f"preflight vs a bare paramiko floor, median of {args.runs} runs, {os.cpu_count()} cores")
            print(
                f"{'boxes':>5} {'floor(true)':>12} {'floor(probe)':>13} {'preflight':>10} "
                f"{'vs true':>8} {'vs probe':>9} {'--fresh':>8}"
            )
            for size in sizes:
                hosts = list(every[:size])
                limit = ",".join(h.name for h in hosts)
                times: dict[str, list[float]] = {"true": [], "probe": [], "ours": [], "fresh": []}
                for _ in range(args.runs):  # interleaved, so all three see the same machine load
                    times["true"].append(floor(hosts, known_hosts, "true", None))
                    times["probe"].append(floor(hosts, known_hosts, probe, password))
                    times["ours"].append(preflight(inventory, limit, home))
                    times["fresh"].append(preflight(inventory, limit, home, fresh=True))
                bare, bare_probe, ours, fresh = (
                    statistics.median(times[k]) for k in ("true", "probe", "ours", "fresh")
                )
                print(
                    f"{size:>5} {bare:>11.3f}s {bare_probe:>12.3f}s {ours:>9.3f}s "
                    f"{ours / bare:>7.2f}x {ours / bare_probe:>8.2f}x {fresh:>7.3f}s"
                )
            print(f"load average after the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        finally:
            fleet.down()


if __name__ == "__main__":
    main()
