"""`make demo`: the whole flow on a simulated mixed fleet, as a user would run it, then nothing left behind.

    1. sim up: a box that needs a memory layout (se7-small), one ready for int8, one whose layout fits int4
    2. sophon-fleet play playbooks/glm4-auto.yml: preflight, memory apply with a real reboot of the first box,
       assets pulled from the sim's mirror and pushed, runtime deployed, bench table, a one-shot chat
    3. sophon-fleet chat se7-1 --prompt ...: one answer, streamed
    4. sim down

Everything the demo makes lives in a temporary directory (state, cache, tool home).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sim.mirror import SIM_MODEL

REPO = Path(__file__).resolve().parent.parent
PROFILES = "se7-small:1,se7-ready-int8:1,se7-int4-only:1"


def banner(text: str) -> None:
    print(f"\n\033[1m=== {text}\033[0m", flush=True)


def sophon_fleet(*args: str, env: dict[str, str], check: bool = True) -> int:
    command = [str(Path(sys.executable).with_name("sophon-fleet")), *args]
    print("$ sophon-fleet " + " ".join(args), flush=True)
    code = subprocess.run(command, env=env).returncode
    if check and code != 0:
        raise SystemExit(f"demo: `sophon-fleet {' '.join(args)}` exited {code}")
    return code


def main() -> None:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="sophon-fleet-demo-"))
    state = work / "fleet"
    env = {
        **os.environ,
        "SOPHON_FLEET_SIM_DIR": str(state),
        "SOPHON_FLEET_MODELS": str(state / "models"),
        "SOPHON_FLEET_MODEL": SIM_MODEL,
        "SOPHON_FLEET_CACHE": str(work / "cache"),
        "SOPHON_FLEET_HOME": str(work / "home"),
        "SOPHON_FLEET_SSH_CONFIG": str(work / "no-ssh-config"),
    }
    inventory = str(state / "inventory.yml")
    try:
        banner(
            "1. A simulated fleet: se7-1 needs a layout change, se7-2 is ready for int8, se7-3 fits int4 only"
        )
        sophon_fleet("sim", "up", "--profile", PROFILES, env=env)
        sophon_fleet("sim", "status", env=env)
        banner("2. The auto playbook: the best variant per box, a new layout only where nothing fits")
        sophon_fleet("play", str(REPO / "playbooks" / "glm4-auto.yml"), "-i", inventory, env=env)
        banner("3. Chat with se7-1 (it runs int8 now, after its layout change and reboot)")
        sophon_fleet("chat", "se7-1", "-i", inventory, "--prompt", "你好", "--max-new-tokens", "24", env=env)
        banner("4. Run it again: nothing changes, nothing reboots")
        sophon_fleet("play", str(REPO / "playbooks" / "glm4-auto.yml"), "-i", inventory, env=env)
    finally:
        banner("5. Tear the fleet down")
        sophon_fleet("sim", "down", env=env, check=False)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
