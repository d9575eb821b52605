"""`sophon-fleet preflight --fresh` vs pipelined Ansible doing the same work on the same boxes, in one run.

Both are whole processes timed from outside, fork to exit, as a user meets them. The work is the same:
every fact asked again (nothing replayed) with the root part run through sudo with the become password.
  - Ansible: ansible-core from PyPI in a venv of this benchmark's own (under the tool's cache dir, never the
    source tree), ANSIBLE_PIPELINING=True, forks = number of boxes, `-b --become-password-file`,
    `-m shell` running the very script `preflight --fresh` runs, host key checking off and the interpreter
    given (both only make Ansible faster). Two connection plugins: paramiko and OpenSSH (`ssh`, with
    ControlPersist off, so that it connects each run as preflight does; a warm ControlPersist master is
    printed for information only). The ratio counts against the faster of the two that connect afresh.
  - sophon-fleet: `sophon-fleet preflight --fresh` (table output) and, for information, replayed preflight.
  - floors: a bare paramiko script (benchmarks/wholeprocess.py), run the same way, with connect + `true`
    and with the same `--fresh` probe.
Each row also shows CPU seconds: the controller's (the process and its children: Ansible's workers, ssh
clients) and the boxes' (their sessions; the simulated boxes share this machine's cores, so box work
lengthens wall time here, where on a real fleet each box has its own CPU).
Goal: `--fresh` >= 3x faster than pipelined Ansible on 16 boxes.

Run as root:  .venv/bin/python benchmarks/preflight_vs_ansible.py [--boxes 16] [--runs 5]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.preflight_scale import PROFILES, SOPHON_FLEET, preflight_ok  # noqa: E402
from benchmarks.wholeprocess import (  # noqa: E402
    BYTECODE_NOTE,
    BoxCpu,
    Cpu,
    child_env,
    exit_ok,
    floor_command,
    interleaved,
    machine,
    median,
    run_process,
    spread,
)
from provision.facts.probe import MARK, probe_script  # noqa: E402
from provision.inventory.hosts import load_inventory  # noqa: E402
from provision.settings import load_settings  # noqa: E402
from sim.fleet import Fleet  # noqa: E402

PARAMIKO = "ansible -c paramiko, pipelined"
SSH = "ansible -c ssh, pipelined, no ControlPersist"
WARM = "ansible -c ssh, pipelined, warm ControlPersist (info)"
FRESH = "sophon-fleet preflight --fresh"
FRESH_FLOOR = "floor: bare paramiko, the --fresh probe"
REPLAYED = "sophon-fleet preflight (replayed)"
TRUE_FLOOR = "floor: bare paramiko, connect + true"
ANSIBLE_CORE = "ansible-core==2.19.14"  # the newest that runs on this Python 3.11 controller and 3.8 boxes


def ansible_venv() -> Path:
    """ansible-core in a venv of the benchmark's own, under the tool's cache dir (created once)."""
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


def ansible_ok(boxes: int):
    def check(done: subprocess.CompletedProcess[str]) -> None:
        ok = sum(1 for line in done.stdout.splitlines() if "| CHANGED |" in line and f"{MARK}end" in line)
        assert done.returncode == 0 and ok == boxes, (
            done.returncode,
            ok,
            done.stdout[-1500:],
            done.stderr[-1500:],
        )

    return check


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--boxes", type=int, default=16)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    venv = ansible_venv()
    version = subprocess.run([str(venv / "bin" / "ansible"), "--version"], capture_output=True, text=True)
    print(f"machine: {machine()}")
    print(f"{version.stdout.splitlines()[0]}, {args.boxes} simulated boxes, median of {args.runs} rounds")
    with tempfile.TemporaryDirectory(prefix="ansible-bench-") as tmp:
        work = Path(tmp)
        print(BYTECODE_NOTE)
        env = child_env(
            work,
            SOPHON_FLEET_HOME=str(work / "home"),
            ANSIBLE_HOME=str(work / "ansible-home"),
            ANSIBLE_LOCAL_TEMP=str(work / "ansible-local"),
            ANSIBLE_PIPELINING="True",
            ANSIBLE_HOST_KEY_CHECKING="False",
            ANSIBLE_PYTHON_INTERPRETER="/usr/bin/python3",
            ANSIBLE_NOCOWS="1",
        )
        fresh_conn = dict(env, ANSIBLE_SSH_ARGS="-o ControlMaster=no -o ControlPersist=no")
        warm_conn = dict(
            env,
            ANSIBLE_SSH_ARGS="-o ControlMaster=auto -o ControlPersist=60s",
            ANSIBLE_SSH_CONTROL_PATH_DIR=str(work / "cp"),
        )
        fleet = Fleet.up(work / "fleet", [PROFILES[i % len(PROFILES)] for i in range(args.boxes)])
        try:
            inventory, become_file = ansible_inventory(fleet, work / "ansible.ini")
            hosts = load_inventory([fleet.inventory_path]).hosts
            password = become_file.read_text().strip()
            fresh_probe = probe_script(with_password=False, fresh=True)
            ours = [SOPHON_FLEET, "preflight", "-i", str(fleet.inventory_path)]

            def ansible(connection: str, conn_env: dict[str, str]) -> list[str]:
                return [
                    str(venv / "bin" / "ansible"), "sim", "-i", str(inventory), "-c", connection,
                    "-f", str(args.boxes), "-b", "--become-password-file", str(become_file),
                    "-m", "shell", "-a", fresh_probe, "-o",
                ]  # fmt: skip

            script = f"sh -c {shlex.quote(probe_script(with_password=True, fresh=True))}"
            reached = preflight_ok(args.boxes)
            commands = [  # label, argv, environment, check
                (PARAMIKO, ansible("paramiko", env), env, ansible_ok(args.boxes)),
                (SSH, ansible("ssh", fresh_conn), fresh_conn, ansible_ok(args.boxes)),
                (FRESH, [*ours, "--fresh"], env, reached),
                (
                    FRESH_FLOOR,
                    floor_command(work, "fresh", hosts, script, password, f"{MARK}end"),
                    env,
                    exit_ok,
                ),
                (REPLAYED, ours, env, reached),
                (TRUE_FLOOR, floor_command(work, "true", hosts, "true", None), env, exit_ok),
                (WARM, ansible("ssh", warm_conn), warm_conn, ansible_ok(args.boxes)),
            ]
            boxes = BoxCpu(fleet.state.dir)
            # a warm ControlPersist master keeps its sessions' box processes unreaped: not counted
            cpu = {label: Cpu(boxes if label != WARM else None) for label, *_ in commands}
            rows = [
                (label, lambda a=argv, e=environ, c=check, label=label: run_process(a, e, c, cpu[label]))
                for label, argv, environ, check in commands
            ]
            for _label, fn in rows:  # warm-up: page cache, ansible's caches, the boxes' kept facts
                fn()
            samples = interleaved(rows, args.runs)
        finally:
            subprocess.run(["rm", "-rf", str(work / "cp")])  # masters exit with ControlPersist (60 s)
            fleet.down()
    t = {label: median(values) for label, values in samples.items()}
    print(f"  {'':54} {'wall':>7}  {'(min-max)':11} {'CPU: controller':>15} {'boxes':>7}")
    for label, values in samples.items():
        mine = median(cpu[label].controller[1:])  # not the warm-up
        box = f"{median(cpu[label].box[1:]):6.2f} s" if cpu[label].box else "     -"
        print(f"  {label:54} {t[label]:6.2f} s  ({spread(values)})  {mine:13.2f} s {box}")
    best = min(t[PARAMIKO], t[SSH])
    ratios = [
        ("pipelined Ansible (faster of the two) / preflight --fresh", best / t[FRESH], "goal >= 3x"),
        ("preflight --fresh / the floor running the same probe", t[FRESH] / t[FRESH_FLOOR], "goal <= 1.3x"),
        ("replayed preflight / the floor connect + true", t[REPLAYED] / t[TRUE_FLOOR], "goal <= 1.3x"),
        (
            "pipelined Ansible / the floor running the same probe",
            best / t[FRESH_FLOOR],
            "no tool can beat it",
        ),
    ]
    for label, ratio, goal in ratios:
        print(f"  {label:58} {ratio:5.2f}x  ({goal})")
    print("  CPU: user + system seconds, of the timed process and its children, and of the boxes' sessions")
    print(f"machine after the run: {machine()}")


if __name__ == "__main__":
    main()
