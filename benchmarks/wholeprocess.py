"""Shared by the preflight benchmarks: every figure is a whole process timed from outside, as a user meets it.

`floor_command` is the baseline: a bare paramiko script (no sophon-fleet code) run the same way, as a fresh
`python` process that imports paramiko, connects to every box at once from a thread pool, authenticates with
the inventory's key, runs one command (optionally handing it the sudo password on stdin) and exits. Rows are
run round-robin (`interleaved`) so load from elsewhere hits them alike, and each row's median is reported.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from provision.inventory.hosts import Host

# The floor: what any tool must at least do, written as plainly as paramiko allows.
FLOOR_SCRIPT = r"""
import json, sys
from concurrent.futures import ThreadPoolExecutor
import paramiko

spec = json.load(open(sys.argv[1]))

def run(host):
    address, user, key = host
    client = paramiko.SSHClient()
    client.load_host_keys(spec["known_hosts"])
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(address, username=user, key_filename=key, look_for_keys=False, allow_agent=False,
                   timeout=10)
    try:
        stdin, stdout, _ = client.exec_command(spec["command"])
        try:
            if spec["password"] is not None:
                stdin.write(spec["password"] + "\n")
            stdin.channel.shutdown_write()
        except OSError:  # a command that exits without reading its stdin
            pass
        out = stdout.read().decode()
        return stdout.channel.recv_exit_status() == 0 and spec["expect"] in out
    finally:
        client.close()

with ThreadPoolExecutor(max_workers=len(spec["hosts"])) as pool:
    ok = sum(pool.map(run, spec["hosts"]))
print(ok)
sys.exit(0 if ok == len(spec["hosts"]) else 1)
"""


def floor_command(
    work: Path, name: str, hosts: Sequence[Host], command: str, password: str | None, expect: str = ""
) -> list[str]:
    """The argv of a bare paramiko process running `command` on every host (spec and script under `work`)."""
    script = work / "floor.py"
    if not script.exists():
        script.write_text(FLOOR_SCRIPT)
    spec = work / f"floor-{name}.json"
    spec.write_text(
        json.dumps(
            {
                "hosts": [[h.address, h.user, h.keys[0]] for h in hosts],
                "known_hosts": hosts[0].known_hosts[0],
                "command": command,
                "password": password,
                "expect": expect,
            }
        )
    )
    return [sys.executable, str(script), str(spec)]


def child_env(work: Path, **extra: str) -> dict[str, str]:
    """The environment of every timed process: this one's, with bytecode cached under `work`.

    Some machines (this one) set PYTHONDONTWRITEBYTECODE=1, so an editable checkout would compile every
    module from source at every start while paramiko and Ansible (installed by pip, which compiles their
    bytecode) would not. A user's install has its bytecode, so the children get a bytecode cache of their
    own (PYTHONPYCACHEPREFIX under `work`, never the source tree), warmed by the first, untimed run.
    Nor do they read this machine's ~/.ssh/known_hosts and ~/.ssh/config: other sessions leave entries
    there for simulated addresses (10.213.K.x) that a later fleet reuses with new keys, and the floor does
    not read them either.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return dict(
        env,
        PYTHONPYCACHEPREFIX=str(work / "pycache"),
        SOPHON_FLEET_USER_KNOWN_HOSTS=str(work / "no-user-known_hosts"),
        SOPHON_FLEET_SSH_CONFIG=str(work / "no-ssh-config"),
        **extra,
    )


BYTECODE_NOTE = (
    "timed processes cache bytecode under the run's temp dir (PYTHONPYCACHEPREFIX), as an installed "
    "package has it, and read no ~/.ssh/known_hosts or ~/.ssh/config"
)


@dataclass
class Cpu:
    """CPU seconds per run of one row: the controller's (the process and the children it waited for) and,
    with `boxes`, the simulated boxes' (see BoxCpu)."""

    boxes: BoxCpu | None = None
    controller: list[float] = field(default_factory=list)
    box: list[float] = field(default_factory=list)


def run_process(
    argv: list[str],
    env: dict[str, str],
    check: Callable[[subprocess.CompletedProcess[str]], None],
    cpu: Cpu | None = None,
) -> float:
    """Seconds from fork to exit of one process; `check` asserts it did the work (after the clock stops)."""
    boxes_before = cpu.boxes.seconds() if cpu and cpu.boxes else 0.0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    took = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    check(done)
    if cpu is not None:
        cpu.controller.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if cpu.boxes:
            cpu.box.append(cpu.boxes.seconds() - boxes_before)
    return took


class BoxCpu:
    """CPU seconds spent on the simulated boxes of one fleet.

    Each box runs in a cgroup of its own (`/sophon-sim/<id>` in the unified hierarchy) whose `cpu.stat`
    counts every process that ever ran in it, sessions that have ended included. Where a box has no such
    cgroup, the box's sshd listener's cumulative times are used (its own and its reaped children's), which
    miss processes that are reparented away from it. On this machine the boxes share the controller's
    cores.
    """

    UNIFIED = Path("/sys/fs/cgroup/unified")

    def __init__(self, state_dir: Path) -> None:
        marker = f"{state_dir}/boxes/".encode()
        self.pids: list[int] = []
        self.cgroups: set[Path] = set()
        for entry in Path("/proc").iterdir():
            try:
                cmdline = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
                # the listener: sshd titles it "sshd: /usr/sbin/sshd -D -e -f <box>/etc/sshd_config ..."
                if not (cmdline.startswith(b"sshd") and b" -D " in cmdline and marker in cmdline):
                    continue
                unified = [
                    line[3:] for line in (entry / "cgroup").read_text().splitlines() if line[:3] == "0::"
                ]
            except OSError:
                continue
            self.pids.append(int(entry.name))
            parts = unified[0].strip("/").split("/") if unified else []
            if len(parts) >= 2 and parts[0] == "sophon-sim" and (self.UNIFIED / parts[0] / parts[1]).is_dir():
                self.cgroups.add(self.UNIFIED / parts[0] / parts[1] / "cpu.stat")
        self.tick = os.sysconf("SC_CLK_TCK")

    def seconds(self) -> float:
        """Now, once the sessions that had ended are gone (a bounded wait: 10 s)."""
        deadline = time.monotonic() + 10
        while self._children() and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.cgroups:
            total = 0
            for stat in self.cgroups:
                usage = next(line for line in stat.read_text().splitlines() if line.startswith("usage_usec"))
                total += int(usage.split()[1])
            return total / 1e6
        ticks = 0
        for pid in self.pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
        return ticks / self.tick

    def _children(self) -> bool:
        wanted = set(self.pids)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if ppid in wanted:
                    return True
        return False


def exit_ok(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, (done.args[:3], done.returncode, done.stdout[-1500:], done.stderr[-1500:])


def interleaved(rows: Sequence[tuple[str, Callable[[], float]]], runs: int) -> dict[str, list[float]]:
    """Every row once per round, `runs` rounds; the samples per row."""
    samples: dict[str, list[float]] = {label: [] for label, _ in rows}
    for _ in range(runs):
        for label, fn in rows:
            samples[label].append(fn())
    return samples


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def machine() -> str:
    """nproc, CPU model, Python, load average now: the line every benchmark prints at its start and end."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, load average {load}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
