"""`make demo`: the whole flow on a simulated mixed fleet, as a user would run it, then nothing left behind.

    1. sim up: a box that needs a memory layout (se7-small), one ready for int8, one whose layout fits int4
    2. sophon-fleet play playbooks/glm4-auto.yml: preflight, memory apply with a real reboot of the first box,
       assets pulled from the sim's mirror and pushed, runtime deployed, bench table, a one-shot chat
    3. sophon-fleet chat se7-1 --prompt ...: one answer, streamed
    4. the playbook again: nothing changes
    5. serve up (sophon-chat.service on every box), the gateway (HAProxy) in front, one question with curl
    6. sim down

Everything the demo makes lives in a temporary directory (state, cache, tool home).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
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


def ask_the_gateway(inventory: str, env: dict[str, str]) -> None:
    """`gateway up` in the background, then one curl question through it (the gateway stops afterwards)."""
    with socket.socket() as probe:  # a free port on loopback
        probe.bind(("127.0.0.1", 0))
        listen = f"127.0.0.1:{probe.getsockname()[1]}"
    command = [str(Path(sys.executable).with_name("sophon-fleet")), "gateway", "up", "-i", inventory]
    print(f"$ sophon-fleet gateway up -i {inventory} --listen {listen} &", flush=True)
    gateway = subprocess.Popen([*command, "--listen", listen], env=env, start_new_session=True)
    try:
        key = subprocess.run(
            [command[0], "gateway", "key"], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        body = json.dumps(
            {"model": SIM_MODEL, "messages": [{"role": "user", "content": "你好"}], "max_tokens": 24},
            ensure_ascii=False,
        )
        curl = ["curl", "-sS", "--retry", "20", "--retry-connrefused", "--retry-delay", "1"]
        curl += ["-H", f"Authorization: Bearer {key}", "-H", "Content-Type: application/json"]
        curl += ["-d", body, f"http://{listen}/v1/chat/completions"]
        print(
            f"$ curl http://{listen}/v1/chat/completions "
            f"-H 'Authorization: Bearer $(sophon-fleet gateway key)' -d '{body}'",
            flush=True,
        )
        answer = subprocess.run(curl, capture_output=True, text=True, timeout=120)
        if answer.returncode != 0:
            raise SystemExit(f"demo: curl through the gateway failed: {answer.stderr.strip()}")
        print(json.dumps(json.loads(answer.stdout), ensure_ascii=False, indent=2), flush=True)
    finally:
        os.killpg(gateway.pid, signal.SIGTERM)
        gateway.wait(timeout=30)


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
        banner("5. Serve: the OpenAI API on every box, the fleet behind one gateway, a question with curl")
        sophon_fleet("serve", "up", "-i", inventory, env=env)
        ask_the_gateway(inventory, env)
    finally:
        banner("6. Tear the fleet down")
        sophon_fleet("sim", "down", env=env, check=False)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
