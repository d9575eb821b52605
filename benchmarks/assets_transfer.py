"""Asset transfer numbers, measured side by side in one run.

    .venv/bin/python benchmarks/assets_transfer.py [--size-mib 1024] [--runs 3] [--no-sim]

1. hashing: the cache's sha256 (1 MiB readinto) vs a plain hashlib loop, same page-cached file (>= 0.95x)
2. interrupted download (HTTP mirror drop; controller killed) and interrupted push (receiver killed):
   bytes transferred twice (<= one 8 MiB chunk)
3. push to a simulated box (root) vs scp at its best, `scp -c aes128-gcm@openssh.com`, same box, same file
   (>= 1.0x); default-cipher scp and an OpenSSH-client push printed beside them
4. the same behind a 1 Gbit tbf link (`sim fault BOX rate 1000`): >= 0.95 of the link rate and >= 1.0x the
   faster scp on that link
5. boxes pulling from the mirror themselves (--from-mirror), each over its own 200 Mbit link:
   8 boxes vs 1 box (<= 1.3x the time)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.wholeprocess import BYTECODE_NOTE, BoxCpu, child_env, machine  # noqa: E402
from provision.assets.cache import Cache, sha256_file  # noqa: E402
from provision.assets.download import pull  # noqa: E402
from provision.assets.pins import load_pins  # noqa: E402
from provision.assets.push import BoxPusher, plan_push  # noqa: E402
from provision.errors import FleetError  # noqa: E402
from provision.inventory.hosts import load_inventory  # noqa: E402
from provision.manifest import load_manifest  # noqa: E402
from provision.ssh.channels import LocalChannel, transport_opener  # noqa: E402
from provision.ssh.transport import (  # noqa: E402
    Connector,
    Exec,  # noqa: E402
    Trust,
)
from sim.mirror import BMODELS, Faults, Mirror, build_asset_tree  # noqa: E402

MB = 1_000_000
MIB = 1 << 20


def interleaved(rows, runs: int, prepare=lambda: None, snapshot=None, cpu=None) -> dict[str, float]:
    """Median seconds per row, running the rows round-robin so load from elsewhere hits them alike;
    `prepare` runs before each row, untimed. A row that returns a float timed itself (its set-up excluded).
    With `snapshot` (-> CPU seconds so far, e.g. (controller, boxes)), `cpu[label]` gets each run's deltas."""
    samples: dict[str, list[float]] = {label: [] for label, _fn in rows}
    for _ in range(runs):
        for label, fn in rows:
            prepare()
            before = snapshot() if snapshot else ()
            started = time.perf_counter()
            took = fn()
            samples[label].append(took if isinstance(took, float) else time.perf_counter() - started)
            if snapshot:
                cpu.setdefault(label, []).append([b - a for a, b in zip(before, snapshot(), strict=True)])
    return {label: statistics.median(values) for label, values in samples.items()}


def controller_cpu() -> float:
    """CPU seconds of this process (every thread) and of the children it waited for."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def plain_hashlib(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            digest.update(block)
    return digest.hexdigest()


def bench_hashing(path: Path, runs: int) -> None:
    size = path.stat().st_size
    plain_hashlib(path)  # warm the page cache
    times = interleaved([("plain", lambda: plain_hashlib(path)), ("ours", lambda: sha256_file(path))], runs)
    plain, ours = times["plain"], times["ours"]
    print(f"1. hashing a page-cached file, {runs} rounds (median)")
    print(f"   plain hashlib loop (1 MiB reads)   {size / plain / MB:7.0f} MB/s")
    print(f"   cache.sha256_file                  {size / ours / MB:7.0f} MB/s   ratio {plain / ours:.2f}x")


def setup_controller(work: Path, tree) -> tuple:
    (work / "glm4-9b.yaml").write_text(tree.manifest_yaml(pin=True))
    manifest = load_manifest(work / "glm4-9b.yaml")
    return manifest, load_pins(manifest)


def bench_interrupted(work: Path, tree, size: int) -> None:
    print("2. interrupted transfers (bytes transferred twice; target <= 8 MiB)")
    manifest, lock = setup_controller(work, tree)
    rel = BMODELS["int4"]
    with Mirror(tree.root) as mirror:
        # a) the mirror drops the connection in the middle
        cache = Cache(work / "cache-a")
        mirror.faults = Faults(drop_after=size // 2 + 12345, path=rel)
        started = time.perf_counter()
        pull(manifest, ["int4"], cache=cache, lock=lock, mirrors=[mirror.url], use_dfss=False, backoff=0)
        took = time.perf_counter() - started
        extra = mirror.bytes_served(rel) - size
        print(
            f"   download, connection dropped at 50%  re-fetched {extra} bytes ({size / took / MB:.0f} MB/s)"
        )
        # b) the controller process is killed in the middle, then pull runs again
        mirror.log.clear()
        mirror.faults = Faults()
        cache = Cache(work / "cache-b")
        part = cache.part_path(manifest.model, rel.rsplit("/", 1)[1])
        child = subprocess.Popen(
            [sys.executable, "-c", PULL_CHILD, str(work / "glm4-9b.yaml"), str(cache.root), mirror.url],
            cwd=Path(__file__).resolve().parent.parent,
        )
        while not part.exists() or part.stat().st_size < size // 2:
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
        on_disk = part.stat().st_size
        pull(manifest, ["int4"], cache=cache, lock=lock, mirrors=[mirror.url], use_dfss=False, backoff=0)
        extra = mirror.bytes_served(rel) - size
        print(f"   download, controller killed at {on_disk / size:.0%}   re-fetched {extra} bytes")
    # c) push: the receiver is killed in the middle (a dropped link), then push runs again
    cache = Cache(work / "cache-a")
    items = [i for i in plan_push(manifest, "int4", cache=cache, lock=lock) if i.name.endswith(".bmodel")]
    sent = [0]

    class Killing(LocalChannel):
        def send(self, data: bytes) -> None:
            if sent[0] >= size // 2:
                self.proc.kill()
            sent[0] += len(data)
            super().send(data)

        def send_file(self, f, offset: int, count: int) -> int:
            if sent[0] >= size // 2:
                self.proc.kill()
            n = super().send_file(f, offset, count)
            sent[0] += n
            return n

    root = str(work / "box")
    try:  # the receiver dies mid-file: the push fails, keeping the part on the box
        BoxPusher("box", Killing, manifest.model, "int4", items, root=root, retries=1, backoff=0).run()
    except FleetError:
        pass
    result = BoxPusher("box", LocalChannel, manifest.model, "int4", items, root=root).run()
    resent = sent[0] + result.transferred - size
    print(f"   push, receiver killed at 50%          re-sent {max(resent, 0)} bytes")


PULL_CHILD = """
import sys
from provision.assets.cache import Cache
from provision.assets.download import pull
from provision.assets.pins import load_pins
from provision.manifest import load_manifest
m = load_manifest(sys.argv[1])
pull(m, ["int4"], cache=Cache(sys.argv[2]), lock=load_pins(m), mirrors=[sys.argv[3]], use_dfss=False)
"""


def bench_push_vs_scp(work: Path, tree, size: int, runs: int, link_mbit: int = 0) -> None:
    """assets push against scp to the same box, rows round-robin, every box emptied (untimed) before a row.

    Like for like: every row but the OpenSSH-client one makes its own connection inside the timed span (scp
    does, so the push rows connect anew too). Two pairs: the transfer of the 1 GiB bmodel (the CLI's
    transport and BoxPusher in this process vs one `scp` of the same file), and whole processes as a user
    meets them (`sophon-fleet assets push --variant int4`: start-up, connect, probe, every int4 file sent
    and verified on the box, unpacked; vs one `scp` of the same files).
    """
    from sim.fleet import Fleet

    manifest, lock = setup_controller(work, tree)
    cache = Cache(work / "cache-a")
    every = plan_push(manifest, "int4", cache=cache, lock=lock)
    items = [i for i in every if i.name.endswith(".bmodel")]
    total = sum(i.size for i in every)
    mux = ["-o", "ControlMaster=auto", "-o", f"ControlPath={work}/mux-%C", "-o", "ControlPersist=60"]
    fleet = Fleet.up(work / f"fleet{link_mbit}", ["se7-factory"])
    try:
        box = fleet.boxes[0]
        key, known = fleet.state.dir / "operator_key", fleet.state.dir / "known_hosts"
        ssh_opts = ["-i", str(key), "-o", f"UserKnownHostsFile={known}", "-o", "BatchMode=yes"]
        host = load_inventory([fleet.inventory_path]).hosts[0]
        gcm = ["-c", "aes128-gcm@openssh.com"]
        env = child_env(work, SOPHON_FLEET_HOME=str(work / "cli-home"))
        cli = [
            str(Path(sys.executable).with_name("sophon-fleet")), "assets", "push",
            "-i", str(fleet.inventory_path), "--model", str(work / "glm4-9b.yaml"),
            "--cache-dir", str(cache.root), "--variant", "int4", "--json",
        ]  # fmt: skip

        def clean() -> None:  # untimed, before every row
            subprocess.run(
                ["ssh", *ssh_opts, f"linaro@{box.address}", "rm -rf /data/sophon-fleet /data/scp"], check=True
            )

        def push() -> None:  # the CLI's own transport (provision/ssh/transport.py: AES-GCM first)
            with Connector(Trust(work / "own_known_hosts")) as connector:
                BoxPusher(
                    box.name, transport_opener(connector.transport(host)), manifest.model, "int4", items
                ).run()

        def openssh(command: str) -> LocalChannel:
            ssh = ["ssh", *ssh_opts, *mux, *gcm, f"linaro@{box.address}", command]
            return LocalChannel(" ".join(shlex.quote(a) for a in ssh))

        def push_openssh() -> (
            None
        ):  # the master starts in the timed span and ends in it, like scp's connection
            BoxPusher(box.name, openssh, manifest.model, "int4", items).run()
            subprocess.run(["ssh", *mux, "-O", "exit", f"linaro@{box.address}"], capture_output=True)

        def scp(*extra: str, files=items) -> None:
            subprocess.run(["ssh", *ssh_opts, f"linaro@{box.address}", "mkdir -p /data/scp"], check=True)
            started = time.perf_counter()
            subprocess.run(
                [
                    "scp",
                    "-q",
                    *ssh_opts,
                    *extra,
                    *(str(i.blob) for i in files),
                    f"linaro@{box.address}:/data/scp/",
                ],
                check=True,
            )
            return time.perf_counter() - started  # the mkdir above is set-up, untimed

        def push_cli() -> None:
            done = subprocess.run(cli, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            assert done.returncode == 0 and '"pushed"' in done.stdout, (
                done.stdout[-800:],
                done.stderr[-800:],
            )

        scp_gcm = "scp -c aes128-gcm@openssh.com (the baseline: scp at its best)"
        rows = [
            ("assets push, this process (CLI's transport, connect included)", push),
            ("assets push via the OpenSSH client, one ControlMaster (info)", push_openssh),
            (scp_gcm, lambda: scp(*gcm)),
            ("scp, OpenSSH default cipher", scp),
            ("sophon-fleet assets push --variant int4 (whole process)", push_cli),
            ("scp -c aes128-gcm@openssh.com, the same int4 files", lambda: scp(*gcm, files=every)),
        ]
        if link_mbit:
            fleet.fault(box.name, "rate", str(link_mbit))
            rows.append(("raw TCP, no SSH (the ceiling of this link)", lambda: raw_tcp(box, size)))
            print(f"4. the same box behind a {link_mbit} Mbit link (tbf), {runs} rounds (median)")
        else:
            print(f"3. push to a simulated box vs scp (same box, page-cached source), {runs} rounds (median)")
        clean()
        push_cli()  # warm-up, untimed: the CLI's bytecode cache, its known_hosts
        boxes = BoxCpu(fleet.state.dir)
        cpu: dict[str, list[list[float]]] = {}
        times = interleaved(rows, runs, clean, lambda: (controller_cpu(), boxes.seconds()), cpu)
        link = link_mbit * 1e6 / 8
        print(
            "   (columns: rate, "
            + ("fraction of the link, " if link_mbit else "")
            + "ratio, CPU s: controller, box)"
        )
        for i, (label, took) in enumerate(times.items()):
            nbytes = total if i in (4, 5) else size
            of_link = f"{nbytes / took / link:.3f} of the link  " if link_mbit else ""
            base = times[scp_gcm] if i < 4 else times[rows[5][0]]
            ratio = f"{base / took:.2f}x scp-gcm" if i != 6 else "             "
            ctl, box_s = (statistics.median(run[k] for run in cpu[label]) for k in (0, 1))
            print(
                f"   {label:64} {nbytes / took / MB:6.0f} MB/s  {of_link}{ratio}  {ctl:5.2f} s {box_s:5.2f} s"
            )
        push_t, cli_t = times[rows[0][0]], times[rows[4][0]]
        best_scp = min(times[scp_gcm], times[rows[3][0]])
        ratio = f"{times[scp_gcm] / push_t:.2f}x scp -c aes128-gcm (goal >= 1.0x)"
        whole = f"whole processes {times[rows[5][0]] / cli_t:.2f}x"
        if link_mbit:
            print(
                f"   assets push: {size / push_t / link:.3f} of the link (goal >= 0.95), {ratio}, "
                f"{best_scp / push_t:.2f}x the faster scp; {whole} ({total / cli_t / link:.3f} of the link)"
            )
            fleet.fault(box.name, "rate", "0")
        else:
            print(f"   assets push: {ratio}; {whole}")
    finally:
        subprocess.run(["ssh", *mux, "-O", "exit", f"linaro@{fleet.boxes[0].address}"], capture_output=True)
        fleet.down()


RAW_SINK = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5001))
s.listen(1)
c, _ = s.accept()
b = bytearray(1 << 20)
while c.recv_into(b):
    pass
c.sendall(b"k")
"""


def raw_tcp(box, size: int) -> float:
    """Plain TCP into the box's namespace: what the link carries without SSH. Returns the seconds from
    connected to the sink's answer (starting the sink is not timed)."""
    import socket

    sink = subprocess.Popen(["ip", "netns", "exec", box.netns, sys.executable, "-c", RAW_SINK])
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                conn = socket.create_connection((box.address, 5001), timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        block = bytes(MIB)
        started = time.perf_counter()
        with conn:
            for _ in range(size // MIB):
                conn.sendall(block)
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)
        took = time.perf_counter() - started
        sink.wait(10)
        return took
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()


def paramiko_opener(address: str, key: Path, known: Path, clients: list):
    """An exec-channel opener over one paramiko connection (what provision/ssh/transport.py provides)."""
    import paramiko

    client = paramiko.SSHClient()
    client.load_host_keys(str(known))
    client.connect(address, username="linaro", key_filename=str(key), look_for_keys=False, allow_agent=False)
    clients.append(client)

    def opener(command: str):
        chan = client.get_transport().open_session()
        chan.settimeout(300)
        chan.exec_command(command)
        return Exec(address, command, chan)

    return opener


def bench_fleet_pull(work: Path, boxes: int, size: int, mbit: int) -> None:
    from provision.assets.push import BoxTarget, push_fleet
    from sim.fleet import Fleet

    print(
        f"5. boxes fetching {size / MIB:.0f} MiB from the mirror themselves, each behind a {mbit} Mbit link"
    )
    tree = build_asset_tree(work / "mirror-small", bmodel_size=size, int8_size=MIB)
    (work / "small").mkdir()
    manifest, lock = setup_controller(work / "small", tree)
    times = {}
    for count in (1, boxes):
        fleet = Fleet.up(work / f"pullfleet{count}", ["se7-factory"] * count)
        clients = []
        try:
            for record in fleet.boxes:
                fleet.fault(record.name, "rate", str(mbit))
            key, known = fleet.state.dir / "operator_key", fleet.state.dir / "known_hosts"

            targets = [
                BoxTarget(r.name, paramiko_opener(r.address, key, known, clients), "int4")
                for r in fleet.boxes
            ]
            with Mirror(tree.root, host=f"10.213.{fleet.state.k}.1") as mirror:
                started = time.perf_counter()
                results = push_fleet(
                    manifest,
                    targets,
                    cache=Cache(work / "no-cache"),
                    lock=lock,
                    mirror=mirror.url,
                    max_parallel=count,
                )
                times[count] = time.perf_counter() - started
            assert all(not isinstance(r, Exception) for r in results.values()), results
        finally:
            for client in clients:
                client.close()
            fleet.down()
    link = mbit * 1e6 / 8
    for count, took in times.items():
        print(f"   {count} box(es): {took:5.2f} s  ({size / took / link:.2f} of each link)")
    print(f"   {boxes} boxes / 1 box: {times[boxes] / times[1]:.2f}x the time (target <= 1.3x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-sim", action="store_true", help="skip the simulated box (needs root)")
    parser.add_argument("--only", default="1,2,3,4,5", help="which parts to run, e.g. 3,4")
    parser.add_argument("--boxes", type=int, default=8, help="boxes pulling from the mirror at once")
    parser.add_argument("--fleet-mib", type=int, default=128, help="file size for the fleet pull")
    args = parser.parse_args()
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="assets-bench-") as tmp:
        work = Path(tmp)
        tree = build_asset_tree(work / "mirror", bmodel_size=size, int8_size=MIB)
        print(f"machine: {machine()}")
        print(f"the CLI rows: {BYTECODE_NOTE}")
        print(f"file: {size / MIB:.0f} MiB, {args.runs} runs each (median), rows round-robin\n")
        parts = set(args.only.split(","))
        if "1" in parts:
            bench_hashing(tree.root / BMODELS["int4"], args.runs)
        if parts & {"2", "3", "4"}:  # the cache the push parts read is filled by part 2's pull
            bench_interrupted(work, tree, size)
        sim = not args.no_sim and os.geteuid() == 0
        if sim and "3" in parts:
            bench_push_vs_scp(work, tree, size, args.runs)
        if sim and "4" in parts:
            bench_push_vs_scp(work, tree, size, args.runs, link_mbit=1000)
        if sim and "5" in parts:
            bench_fleet_pull(work, args.boxes, args.fleet_mib * MIB, 200)
        print(f"\nmachine after the run: {machine()}")


if __name__ == "__main__":
    main()
