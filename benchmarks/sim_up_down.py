"""How fast a simulated fleet comes up (every sshd answering) and goes away.

Target: 16 boxes up in < 3 s, down in < 2 s on a 2-core machine. Run as root:
    .venv/bin/python benchmarks/sim_up_down.py [--boxes 16] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sim.fleet import Fleet


def one_run(boxes: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        fleet = Fleet.up(Path(tmp) / "fleet", ["se7-factory"] * boxes)
        up = time.monotonic() - started
        started = time.monotonic()
        left = fleet.down()
        down = time.monotonic() - started
        assert not left, left
    return up, down


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--boxes", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    ups, downs = zip(*(one_run(args.boxes) for _ in range(args.runs)), strict=True)
    print(f"{args.boxes} boxes, {args.runs} runs")
    for label, times, target in (("up   (all sshd answering)", ups, 3), ("down (nothing left)", downs, 2)):
        median, worst = statistics.median(times), max(times)
        print(f"  {label:26} median {median:.2f} s  max {worst:.2f} s  target < {target} s")


if __name__ == "__main__":
    main()
