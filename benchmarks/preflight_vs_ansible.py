"""preflight vs Ansible ad-hoc `shell` gathering the same facts on the same simulated boxes, in one run.

Ansible: ansible-core from PyPI (installed once into its own venv under the cache dir), the paramiko
connection, forks = number of boxes, `-m shell` running the very probe script preflight runs (as root via
`-b`, so its `sudo -n` part needs no password), host key checking off and the interpreter given (both only
make Ansible faster). sophon-fleet: the `sophon-fleet preflight --json` command, as a fresh process too.
Both are timed wall-clock from process start to exit. Target: preflight >= 3x faster.

Run as root:  .venv/bin/python benchmarks/preflight_vs_ansible.py [--boxes 16] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provision.facts.probe import probe_script
from provision.inventory.hosts import load_inventory
from provision.settings import load_settings
from sim.fleet import Fleet

ANSIBLE_CORE = "ansible-core==2.19.14"  # the newest that runs on this Python 3.11 controller and 3.8 boxes
PROFILES = ["se7-factory", "se7-ready-int8", "se7-small", "se7-int4-only"]


def ansible_venv() -> Path:
    venv = load_settings().cache_dir / "bench" / "ansible-venv"
    if not (venv / "bin" / "ansible").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", ANSIBLE_CORE, "paramiko"], check=True)
    return venv


def ansible_inventory(fleet: Fleet, path: Path) -> tuple[Path, Path]:
    hosts = load_inventory([fleet.inventory_path]).hosts
    lines = ["[sim]"] + [
        f"{h.name} ansible_host={h.address} ansible_user={h.user} ansible_ssh_private_key_file={h.keys[0]}"
        for h in hosts
    ]
    path.write_text("\n".join(lines) + "\n")
    become = hosts[0].become_password
    assert become is not None and become.file
    return path, Path(become.file)


def timed(command: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    return time.monotonic() - started, done


def run_ansible(venv: Path, inventory: Path, become_file: Path, boxes: int, env: dict[str, str]) -> float:
    command = [
        str(venv / "bin" / "ansible"), "sim", "-i", str(inventory), "-c", "paramiko", "-f", str(boxes),
        "-b", "--become-password-file", str(become_file), "-m", "shell",
        "-a", probe_script(with_password=False), "-o",
    ]  # fmt: skip
    seconds, done = timed(command, env)
    ok = sum(1 for line in done.stdout.splitlines() if "| CHANGED |" in line and "@@sophon-fleet:end" in line)
    assert done.returncode == 0 and ok == boxes, (
        done.returncode,
        ok,
        done.stdout[-2000:],
        done.stderr[-2000:],
    )
    return seconds


def run_preflight(inventory: Path, boxes: int, env: dict[str, str]) -> float:
    command = [
        str(Path(sys.executable).with_name("sophon-fleet")),
        "preflight",
        "-i",
        str(inventory),
        "--json",
    ]
    seconds, done = timed(command, env)
    doc = json.loads(done.stdout)
    assert doc["summary"]["unreachable"] == 0 and doc["summary"]["error"] == 0, done.stdout[-2000:]
    assert len(doc["hosts"]) == boxes
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--boxes", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    venv = ansible_venv()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(
            os.environ,
            SOPHON_FLEET_HOME=str(Path(tmp) / "home"),
            ANSIBLE_HOST_KEY_CHECKING="False",
            ANSIBLE_PYTHON_INTERPRETER="/usr/bin/python3",
            ANSIBLE_LOCAL_TEMP=str(Path(tmp) / "ansible-local"),
            ANSIBLE_NOCOWS="1",
        )
        fleet = Fleet.up(Path(tmp) / "fleet", [PROFILES[i % len(PROFILES)] for i in range(args.boxes)])
        try:
            inventory, become_file = ansible_inventory(fleet, Path(tmp) / "ansible.ini")
            run_ansible(venv, inventory, become_file, args.boxes, env)  # warm-up (both)
            run_preflight(fleet.inventory_path, args.boxes, env)
            ansible, ours = [], []
            for _ in range(args.runs):
                ansible.append(run_ansible(venv, inventory, become_file, args.boxes, env))
                ours.append(run_preflight(fleet.inventory_path, args.boxes, env))
        finally:
            fleet.down()
    a, p = statistics.median(ansible), statistics.median(ours)
    print(
        f"{args.boxes} simulated boxes, median of {args.runs} runs, {os.cpu_count()} cores, same probe script"
    )
    print(f"  ansible ad-hoc shell (paramiko, forks {args.boxes}): {a:6.2f} s   runs {_fmt(ansible)}")
    print(f"  sophon-fleet preflight --json:                {p:6.2f} s   runs {_fmt(ours)}")
    print(f"  preflight is {a / p:.1f}x faster (target >= 3x)")
    print(f"  load average after the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def _fmt(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    main()
