"""The box's OpenAI-compatible API as a systemd service: `sophon-chat.service`.

The unit runs the deployed runtime (`runtime/current`, so a restart picks up a new deploy) in its venv as
the box user, `Restart=on-failure`, enabled for multi-user.target; installed with sudo. Its API key is made
on the controller (one per box, `<home>/serve/keys/<host>.key`, 0600), stored on the box in
`/data/sophon-fleet/serve/api-key` (0600, the box user's: the service and the operator, nobody else) and
shown only by `serve key`. Health is read on the box itself over loopback (no key, no open port needed).

Plan before acting: `plan_up` compares the unit, the key and the service state with what they should be,
so a second `serve up` changes nothing.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.boxpaths import RUNTIME_LINK, WORK_DIR
from provision.errors import FleetError, RemoteError
from provision.manifest import Manifest
from provision.ssh.transport import Transport

UNIT_NAME = "sophon-chat.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"
SERVE_DIR = f"{WORK_DIR}/serve"
BOX_KEY = f"{SERVE_DIR}/api-key"
PORT = 8000
READY_TIMEOUT = 180.0  # loading ChatGLM4-9B onto the TPU takes tens of seconds on a real box

UNIT_TEMPLATE = """\
# sophon-fleet: the box's OpenAI-compatible chat API (written by `sophon-fleet serve up`; do not edit)
[Unit]
Description=sophon-fleet chat API ({model} {variant}, OpenAI-compatible) on port {port}
After=network-online.target
Wants=network-online.target
RequiresMountsFor={work}

[Service]
Type=simple
User={user}
Group={user}
WorkingDirectory={runtime}/app
Environment=PYTHONUNBUFFERED=1
ExecStart={runtime}/venv/bin/python -m chat serve --http 0.0.0.0:{port} --bmodel {bmodel} --token {token} \
--model-name {model} --variant {variant} --api-key-file {key}
Restart=on-failure
RestartSec=2
TimeoutStopSec=15

[Install]
WantedBy=multi-user.target
"""

HEALTH_SCRIPT = """\
import json, sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen("http://127.0.0.1:{port}/health", timeout=3) as r:
        print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.read().decode())
except Exception as e:
    print(json.dumps({{"ready": False, "error": type(e).__name__ + ": " + str(e)}}))
"""


def render_unit(manifest: Manifest, variant: str, user: str, port: int = PORT) -> str:
    from provision.runtime.deploy import model_paths  # deploy imports this module (restart after deploy)

    bmodel, token = model_paths(manifest, variant)
    return UNIT_TEMPLATE.format(
        model=manifest.model,
        variant=variant,
        port=port,
        work=WORK_DIR,
        user=user,
        runtime=RUNTIME_LINK,
        bmodel=shlex.quote(bmodel),
        token=shlex.quote(token),
        key=BOX_KEY,
    )


# ---- keys (controller side) ---------------------------------------------------------------------------


def key_path(home: Path, host: str) -> Path:
    return home / "serve" / "keys" / f"{host}.key"


def ensure_key(path: Path, prefix: str = "sk-box-") -> str:
    """The key stored at `path`, made (random, 0600, atomically) on first use."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = prefix + secrets.token_urlsafe(32)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    os.replace(tmp, path)
    return key


def read_key(path: Path, host: str) -> str:
    """Raises FleetError when `serve up` never made a key for `host`."""
    if not path.exists():
        raise FleetError(f"{host}: no API key yet", hint=f"run `sophon-fleet serve up --limit {host}` first")
    return path.read_text().strip()


# ---- the box side -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitState:
    installed: bool
    enabled: str  # enabled | disabled | ... (systemctl is-enabled)
    active: str  # ActiveState: active | inactive | failed | activating ...
    sub: str
    main_pid: int
    restarts: int


@dataclass(frozen=True)
class ServeStatus:
    host: str
    unit: UnitState
    health: dict[str, Any]
    changes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ready(self) -> bool:
        return bool(self.health.get("ready"))

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "unit": vars(self.unit),
            "health": self.health,
            "ready": self.ready,
            "changes": list(self.changes),
        }


def unit_state(transport: Transport) -> UnitState:
    """systemctl's view of the unit (one round trip)."""
    script = (
        f"test -f {UNIT_PATH} && echo installed=yes || echo installed=no; "
        f"echo enabled=$(systemctl is-enabled {UNIT_NAME} 2>/dev/null); "
        f"systemctl show {UNIT_NAME} -p ActiveState -p SubState -p MainPID -p NRestarts 2>/dev/null"
    )
    fields = dict(
        line.split("=", 1) for line in transport.run(script, check=False).stdout.splitlines() if "=" in line
    )
    return UnitState(
        installed=fields.get("installed") == "yes",
        enabled=fields.get("enabled") or "not-found",
        active=fields.get("ActiveState", "unknown"),
        sub=fields.get("SubState", "unknown"),
        main_pid=int(fields.get("MainPID") or 0),
        restarts=int(fields.get("NRestarts") or 0),
    )


def box_health(transport: Transport, port: int = PORT) -> dict[str, Any]:
    """/health as the box itself sees it (loopback: no key needed)."""
    result = transport.run(["python3", "-c", HEALTH_SCRIPT.format(port=port)], check=False, timeout=20)
    try:
        doc = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"ready": False, "error": (result.stderr or result.stdout).strip()[-200:]}
    return doc if isinstance(doc, dict) else {"ready": False, "error": "not a JSON object"}


def wait_ready(transport: Transport, host: str, timeout: float = READY_TIMEOUT, port: int = PORT) -> dict:
    """Poll /health (capped backoff) until ready; RemoteError naming the unit's state when it never is."""
    deadline, delay = time.monotonic() + timeout, 0.2
    while True:
        health = box_health(transport, port)
        if health.get("ready"):
            return health
        if time.monotonic() > deadline:
            unit = unit_state(transport)
            raise RemoteError(
                f"{host}: {UNIT_NAME} is not ready after {timeout:.0f} s "
                f"({unit.active}/{unit.sub}, {unit.restarts} restarts): {health.get('error') or health}",
                hint=f"look at `journalctl -u {UNIT_NAME}` on the box",
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


def plan_up(transport: Transport, unit_text: str, key: str) -> list[str]:
    """What `serve up` has to change on this box: unit, key, enable, start (empty: nothing)."""
    have_unit = transport.run(f"cat {UNIT_PATH}", check=False).stdout
    have_key = transport.run(f"cat {BOX_KEY}", check=False).stdout.strip()
    state = unit_state(transport)
    changes = []
    if have_unit != unit_text:
        changes.append("unit")
    if have_key != key:
        changes.append("key")
    if state.enabled != "enabled":
        changes.append("enable")
    if changes or state.active != "active":
        changes.append("start" if state.active != "active" else "restart")
    return changes


def serve_up(transport: Transport, host: str, unit_text: str, key: str, *, wait: bool = True) -> ServeStatus:
    """Install/refresh the unit (`render_unit`) and key as planned, (re)start the service, wait for ready."""
    changes = plan_up(transport, unit_text, key)
    if "key" in changes:
        transport.run(
            f"umask 077 && mkdir -p {SERVE_DIR} && cat > {BOX_KEY}.tmp && mv {BOX_KEY}.tmp {BOX_KEY}",
            stdin=key + "\n",
        )
    if "unit" in changes:
        staged = f"{SERVE_DIR}/{UNIT_NAME}.new"
        transport.run(f"mkdir -p {SERVE_DIR} && cat > {staged}", stdin=unit_text)
        transport.run(f"install -m 0644 {staged} {UNIT_PATH} && systemctl daemon-reload", sudo=True)
    if "enable" in changes:
        transport.run(f"systemctl enable {UNIT_NAME}", sudo=True)
    if "start" in changes or "restart" in changes:
        transport.run(f"systemctl restart {UNIT_NAME}", sudo=True)
    health = wait_ready(transport, host) if wait else box_health(transport)
    return ServeStatus(host, unit_state(transport), health, tuple(changes))


def serve_down(transport: Transport, host: str) -> ServeStatus:
    """Stop and disable the service (the unit file and key stay, so `serve up` is quick)."""
    state = unit_state(transport)
    changes: tuple[str, ...] = ()
    if state.installed and (state.enabled == "enabled" or state.active != "inactive"):
        transport.run(f"systemctl disable --now {UNIT_NAME}", sudo=True)
        changes = ("stop",)
    return ServeStatus(host, unit_state(transport), {"ready": False}, changes)


def serve_status(transport: Transport, host: str) -> ServeStatus:
    unit = unit_state(transport)
    health = box_health(transport) if unit.installed else {"ready": False, "error": "not installed"}
    return ServeStatus(host, unit, health)


def restart_if_serving(transport: Transport) -> bool:
    """After `deploy` switched `current`: restart the service on the new version (if it is enabled)."""
    if unit_state(transport).enabled != "enabled":
        return False
    transport.run(f"systemctl restart {UNIT_NAME}", sudo=True)
    return True
