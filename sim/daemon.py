"""The fleet daemon: keeps every simulated box powered, and reboots them on request.

One process per fleet (`python -m sim.daemon STATE_DIR`), one thread per box. A box's life:
boot (read /boot/emmcboot.itb: a valid image sets the heaps and a new boot_id; an invalid one, or the `dark`
fault, leaves the box off until `heal`) → run until a power request (`reboot`/`off` on the box's FIFO, from
`sudo reboot` inside the box or `sim reboot`) → power off (SIGKILL PID 1) → boot delay → boot again.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

from sim import itb
from sim.box import BoxPaths, PowerState, boot_image
from sim.hw import BoxHardware, render
from sim.state import FleetState, hw_lock, write_status


class BoxSupervisor(threading.Thread):
    def __init__(
        self, paths: BoxPaths, name: str, netns: str, site: Path | None, stop: threading.Event
    ) -> None:
        super().__init__(name=f"box-{name}", daemon=True)
        self.paths, self.box, self.netns, self.site, self.stop = paths, name, netns, site, stop
        self.fifo = os.open(paths.power_fifo, os.O_RDWR | os.O_NONBLOCK)
        self.power: PowerState | None = None

    def run(self) -> None:
        first = True
        while not self.stop.is_set():
            if not first and not self._sleep(BoxHardware.load(self.paths.dir).boot_delay_s):
                break
            first = False
            reason = self._boot()
            if reason:
                self._status("dark", reason)
                if self._wait_request({"heal"}) is None:
                    break
                continue
            request = self._wait_request({"reboot", "off"})
            self._status("rebooting", "power cycle")
            self._power_off()
            if request == "off":
                self._status("off", "powered off")
                if self._wait_request({"heal", "on"}) is None:
                    break
        self._power_off()

    def _boot(self) -> str | None:
        """Boot the box; returns why it stays dark, or None when it is up."""
        with hw_lock(self.paths.dir):
            hw = BoxHardware.load(self.paths.dir)
            if "dark" in hw.faults:
                return "fault: dark (the box never comes back from this boot)"
            try:
                image = boot_image(self.paths)
            except itb.InvalidImage as exc:
                return f"boot image invalid: {exc}"
            hw.heaps, hw.dts, hw.ddr_mib = list(image.heaps), image.dts, list(image.ddr)
            if "boot-heaps-short" in hw.faults:  # the kernel could not reserve what the dtb asks (this boot)
                hw.heaps = [max(1, mib // 2) if mib else 0 for mib in hw.heaps]
                hw.faults.remove("boot-heaps-short")
            hw.boot_count += 1
            hw.boot_id = str(uuid.uuid4())
            hw.save(self.paths.dir)
            render(hw, self.paths.dir)
        self.power = PowerState.start(self.paths, self.box, self.netns, self.site)
        pid = self.power.init_pid()
        self._status("up", f"boot #{hw.boot_count}", pid=pid, boot_id=hw.boot_id)
        return None

    def _power_off(self) -> None:
        if self.power is not None:
            self.power.kill()
            self.power = None

    def _wait_request(self, wanted: set[str]) -> str | None:
        """Block until one of `wanted` arrives on the FIFO (others are ignored); None when stopping."""
        while not self.stop.is_set():
            if self.power is not None and self.power.proc.poll() is not None:
                return "reboot"  # PID 1 died on its own: the box crashed, so it reboots
            ready, _, _ = select.select([self.fifo], [], [], 0.05)
            if not ready:
                continue
            for word in os.read(self.fifo, 4096).decode(errors="replace").split():
                if word in wanted:
                    return word
        return None

    def _sleep(self, seconds: float) -> bool:
        return not self.stop.wait(seconds)

    def _status(self, state: str, detail: str, **extra: object) -> None:
        write_status(self.paths.dir, {"state": state, "detail": detail, "since": time.time(), **extra})


def main(state_dir: str) -> None:
    state = FleetState.load(Path(state_dir))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    site = state.site_dir
    supervisors = [BoxSupervisor(state.box_paths(b.name), b.name, b.netns, site, stop) for b in state.boxes]
    for sup in supervisors:
        sup.start()
    (state.dir / "daemon.ready").write_text(json.dumps({"pid": os.getpid()}))
    while not stop.wait(0.5):
        pass
    for sup in supervisors:
        sup.join(timeout=10)


if __name__ == "__main__":
    main(sys.argv[1])
