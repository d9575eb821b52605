"""preflight on 1, 16 and 32 simulated boxes against bare paramiko floors, every figure a whole process.

Each row is a fresh process timed from outside, from fork to exit, as a user meets it: interpreter start,
imports, inventory, connections, the probe, rendering. The floors are a bare paramiko script run the same way
(benchmarks/wholeprocess.py: one `python` process, a thread pool, one client per box, key auth):
  - floor(true): connect + `true`, the least any tool can do; replayed preflight is compared with it.
  - floor(fresh probe): connect + the very script `preflight --fresh` runs (every fact asked again, the
    sudo password on stdin); `preflight --fresh` is compared with it.
  - floor(replayed probe): the replayed probe, for information (what the box itself costs).
Goals: replayed preflight <= 1.3x floor(true); `--fresh` <= 1.3x floor(fresh probe).
Before the boxes, CLI start-up: `sophon-fleet --help` and `preflight --help` against `python -c pass` and
`python -c 'import paramiko'`, also whole processes.

Rows run round-robin (`--runs` rounds) so load from elsewhere hits them alike; medians are printed, with
the load average before and after, and under each size the CPU seconds of the controller side (`ctl`: the
timed process and its children) and of the boxes (`box`: their sessions; on this machine the simulated boxes
share the controller's cores, so box work lengthens every row's wall time).

Run as root:  .venv/bin/python benchmarks/preflight_scale.py [--sizes 1,16,32] [--runs 5]
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
from sim.fleet import Fleet  # noqa: E402

PROFILES = ["se7-factory", "se7-ready-int8", "se7-small", "se7-int4-only"]
SOPHON_FLEET = str(Path(sys.executable).with_name("sophon-fleet"))


def preflight_ok(boxes: int):
    """A check that the preflight table run reached every box (exit 0 or 3: ready or not ready)."""

    def check(done: subprocess.CompletedProcess[str]) -> None:
        summary = re.search(r"(\d+) box(?:es)? in [\d.]+ s: (.*)", done.stderr)
        assert done.returncode in (0, 3) and summary, (done.returncode, done.stderr[-1500:])
        assert int(summary.group(1)) == boxes, summary.group(0)
        assert "unreachable" not in summary.group(2) and "error" not in summary.group(2), summary.group(0)

    return check


CLI_FROM = "import sys; sys.path.insert(0, sys.argv.pop(1)); from provision.cli.main import main; main()"


def startup(env: dict[str, str], runs: int, baseline: Path | None = None) -> None:
    py = sys.executable
    rows = [
        ("python -c pass", [py, "-c", "pass"]),
        ("python -c 'import paramiko'", [py, "-c", "import paramiko"]),
        ("sophon-fleet --help", [SOPHON_FLEET, "--help"]),
        ("sophon-fleet preflight --help", [SOPHON_FLEET, "preflight", "--help"]),
    ]
    if baseline:  # both checkouts started the same way: python -c, the checkout first on sys.path
        here = Path(__file__).resolve().parent.parent
        for tree, name in ((baseline, "baseline"), (here, "this tree")):
            rows.append((f"--help, {name}", [py, "-c", CLI_FROM, str(tree), "--help"]))
            rows.append((f"preflight --help, {name}", [py, "-c", CLI_FROM, str(tree), "preflight", "--help"]))
    for _label, argv in rows:  # warm-up: bytecode cache, page cache
        run_process(argv, env, exit_ok)
    timed = [(label, lambda argv=argv: run_process(argv, env, exit_ok)) for label, argv in rows]
    no_bytecode = dict(env, PYTHONDONTWRITEBYTECODE="1")
    no_bytecode.pop("PYTHONPYCACHEPREFIX")
    timed.append(
        (
            "sophon-fleet preflight --help, no bytecode (info)",
            lambda: run_process([SOPHON_FLEET, "preflight", "--help"], no_bytecode, exit_ok),
        )
    )
    samples = interleaved(timed, runs)
    print(f"CLI start-up, whole processes, median of {runs} (min-max)")
    for label, values in samples.items():
        print(f"  {label:50} {median(values):6.3f} s  ({spread(values)})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,16,32")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="also time the CLI start-up of this checkout (e.g. `git worktree add /tmp/before main`)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="preflight-bench-") as tmp:
        work = Path(tmp)
        env = child_env(work, SOPHON_FLEET_HOME=str(work / "home"))
        print(BYTECODE_NOTE)
        startup(env, args.runs * 2, args.baseline_tree)
        fleet = Fleet.up(work / "fleet", [PROFILES[i % len(PROFILES)] for i in range(max(sizes))])
        try:
            inventory = str(fleet.inventory_path)
            every = load_inventory([fleet.inventory_path]).hosts
            boxes = BoxCpu(fleet.state.dir)
            password = every[0].become_password.resolve() if every[0].become_password else None
            end = f"{MARK}end"

            def probe(fresh: bool) -> str:
                return f"sh -c {shlex.quote(probe_script(with_password=password is not None, fresh=fresh))}"

            # warm-up: page cache, and every box keeps this boot's facts (what replayed preflight replays)
            subprocess.run(
                [SOPHON_FLEET, "preflight", "-i", inventory, "--json"], env=env, capture_output=True
            )
            print(f"\npreflight vs bare paramiko floors, whole processes, median of {args.runs} rounds")
            header = (
                f"{'boxes':>5} {'floor(true)':>12} {'preflight':>10} {'ratio':>6} | "
                f"{'floor(fresh probe)':>18} {'--fresh':>8} {'ratio':>6} | {'floor(replayed probe)':>21}"
            )
            print(header)
            for size in sizes:
                hosts = list(every[:size])
                limit = ",".join(h.name for h in hosts)
                argv = [SOPHON_FLEET, "preflight", "-i", inventory, "--limit", limit]

                commands = [  # label, argv, check
                    ("true", floor_command(work, f"true{size}", hosts, "true", None), exit_ok),
                    ("ours", argv, preflight_ok(size)),
                    (
                        "fresh_floor",
                        floor_command(work, f"f{size}", hosts, probe(True), password, end),
                        exit_ok,
                    ),
                    ("fresh", [*argv, "--fresh"], preflight_ok(size)),
                    (
                        "replay_floor",
                        floor_command(work, f"r{size}", hosts, probe(False), password, end),
                        exit_ok,
                    ),
                ]
                cpu = {label: Cpu(boxes) for label, *_ in commands}
                rows = [
                    (label, lambda a=command, c=check, s=cpu[label]: run_process(a, env, c, s))
                    for label, command, check in commands
                ]
                t = {label: median(values) for label, values in interleaved(rows, args.runs).items()}
                c = {label: median(v.controller) for label, v in cpu.items()}
                b = {label: median(v.box) for label, v in cpu.items()}
                fresh_ratio = t["fresh"] / t["fresh_floor"]
                print(
                    f"{size:>5} {t['true']:>11.3f}s {t['ours']:>9.3f}s {t['ours'] / t['true']:>5.2f}x | "
                    f"{t['fresh_floor']:>17.3f}s {t['fresh']:>7.3f}s {fresh_ratio:>5.2f}x | "
                    f"{t['replay_floor']:>20.3f}s"
                )
                for name, v in (("ctl", c), ("box", b)):
                    print(
                        f"{name:>5} {v['true']:>11.3f}s {v['ours']:>9.3f}s {'':>6} | "
                        f"{v['fresh_floor']:>17.3f}s {v['fresh']:>7.3f}s {'':>6} | {v['replay_floor']:>20.3f}"
                        "s"
                    )
            print("ctl, box: CPU seconds (user + system) of the timed process and its children, of the boxes")
            print("goals: replayed preflight <= 1.3x floor(true); --fresh <= 1.3x floor(fresh probe)")
        finally:
            fleet.down()
    print(f"machine after the run: {machine()}")


if __name__ == "__main__":
    main()
