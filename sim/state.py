"""The fleet's state directory: what exists, so that `sim down` can remove it even after a crash.

STATE/fleet.json          fleet index, boxes, every mount and namespace created (written before creating)
STATE/operator_key(.pub)  the operator's SSH key (key login as linaro)
STATE/known_hosts         the boxes' host keys, pinned
STATE/become_password     linaro's sudo password (0600)
STATE/inventory.yml       an inventory the rest of the CLI accepts
STATE/ovl                 tmpfs: upper layers of the boxes' root overlays
STATE/boxes/NAME          one box (see sim.box)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from provision.errors import ConfigError, SimError
from sim.box import BoxPaths


@dataclass
class BoxRecord:
    name: str
    index: int
    address: str
    netns: str
    profile: str
    role: str = "box"  # or "mirror"


@dataclass
class FleetState:
    dir: Path
    k: int
    boxes: list[BoxRecord] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)  # in creation order
    namespaces: list[str] = field(default_factory=list)
    daemon_pid: int | None = None
    helper_pids: list[int] = field(default_factory=list)  # e.g. the mirror's HTTP server
    site: str | None = None
    python_version: str | None = None  # what the boxes run as python3 ("3.8" like a real SE7)
    engine: str = "emulator"  # the boxes' sophon.sail: the numpy emulator or the vendor runtime ("cmodel")
    runtime_dir: str | None = None  # the vendor runtime's libraries (engine cmodel)

    @property
    def site_dir(self) -> Path | None:
        return Path(self.site) if self.site else None

    @property
    def overlay_dir(self) -> Path:
        return self.dir / "ovl"

    def box_paths(self, name: str) -> BoxPaths:
        return BoxPaths(dir=self.dir / "boxes" / name, overlay=self.overlay_dir / name)

    def box(self, name: str) -> BoxRecord:
        for record in self.boxes:
            if record.name == name:
                return record
        raise ConfigError(
            f"no box {name!r} in the fleet in {self.dir} (boxes: {', '.join(b.name for b in self.boxes)})",
            key="BOX",
        )

    def save(self) -> None:
        data = asdict(self)
        data["dir"] = str(self.dir)
        tmp = self.dir / "fleet.json.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.dir / "fleet.json")

    @classmethod
    def load(cls, state_dir: Path) -> FleetState:
        try:
            data = json.loads((state_dir / "fleet.json").read_text())
        except FileNotFoundError:
            raise SimError(
                f"no simulated fleet in {state_dir}",
                hint=f"start one with `sophon-fleet sim up --state-dir {state_dir}`, or give the --state-dir "
                "of a fleet that is up",
            ) from None
        data["dir"] = Path(data["dir"])
        data["boxes"] = [BoxRecord(**b) for b in data["boxes"]]
        return cls(**data)


@contextlib.contextmanager
def hw_lock(box_dir: Path) -> Iterator[None]:
    """Serialise changes to a box's hardware state between the daemon and `sim fault`."""
    with open(box_dir / "hw.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_status(box_dir: Path, status: dict[str, object]) -> None:
    tmp = box_dir / "run" / "status.json.tmp"
    tmp.write_text(json.dumps(status))
    os.replace(tmp, box_dir / "run" / "status.json")


def read_status(box_dir: Path) -> dict[str, object]:
    try:
        return json.loads((box_dir / "run" / "status.json").read_text())
    except (OSError, ValueError):
        return {"state": "unknown", "detail": "no status yet"}
