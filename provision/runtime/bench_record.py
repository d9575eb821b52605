"""Each box's last `bench` result, kept in the tool's home (<home>/bench/<host>.json) for `status`."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from provision.runtime.bench import BoxBench


@dataclass(frozen=True)
class LastBench:
    variant: str
    ftl_s: float  # median of the runs
    tps: float  # median of the runs
    runs: int
    when: float  # unix time the bench ended

    def as_dict(self) -> dict[str, object]:
        return {
            "variant": self.variant,
            "ftl_s": self.ftl_s,
            "tps": self.tps,
            "runs": self.runs,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.when)),
        }

    def short(self) -> str:
        when = time.strftime("%m-%d %H:%M", time.gmtime(self.when))
        return f"{self.variant} {self.ftl_s:.3f} s {self.tps:.2f} tok/s ({when})"


def _path(home: Path, host: str) -> Path:
    return home / "bench" / f"{host}.json"


def record_bench(home: Path, bench: BoxBench, when: float | None = None) -> Path:
    """Write `bench` as the box's last result, atomically (a reader sees the old file or the new one)."""
    path = _path(home, bench.host)
    path.parent.mkdir(parents=True, exist_ok=True)
    last = LastBench(bench.variant, bench.ftl.median, bench.tps.median, len(bench.runs), when or time.time())
    data = {"host": bench.host, **vars(last)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{bench.host}.", suffix=".part")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def last_bench(home: Path, host: str) -> LastBench | None:
    """The box's last recorded bench; None when there is none or the file cannot be read."""
    try:
        data = json.loads(_path(home, host).read_text())
        return LastBench(
            str(data["variant"]),
            float(data["ftl_s"]),
            float(data["tps"]),
            int(data["runs"]),
            float(data["when"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
