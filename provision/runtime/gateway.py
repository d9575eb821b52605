"""The fleet as one OpenAI-compatible endpoint: HAProxy (Debian's package) in front of every serving box.

    client --Bearer <gateway key>--> frontend (listen, default 127.0.0.1:8080; 401 without a gateway key)
        --> backend `fleet`: balance leastconn, one server per box, maxconn 1 (requests queue here and go
            to the first free box), health checks straight at each box's /health, redispatch on connect
            failure, stream-long timeouts
        --> per box a tiny `listen` on an abstract socket that sets `Authorization: Bearer <that box's key>`
            and forwards to the box's port 8000.

HAProxy chooses the server after `http-request` rules run, so a header cannot depend on the chosen server in
one proxy; the per-box hop is how each box gets its own key. Files live in `<home>/gateway/`:
haproxy.cfg (0600: it holds the box keys), client-keys (the gateway's own keys, 0600), auth.lst (the
SHA-256 of each `Bearer KEY` header, which the frontend's ACL looks up), gateway.json (the listen address),
haproxy.pid (the master, for reload).
`reload` regenerates the config, validates it (`haproxy -c`) and sends SIGUSR2 to the master: new workers
take new connections, old ones finish their streams.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from provision.errors import ConfigError, FleetError
from provision.inventory.hosts import Host
from provision.runtime import serve as serve_core

HAPROXY = "/usr/sbin/haproxy"
DEFAULT_LISTEN = "127.0.0.1:8080"


@dataclass(frozen=True)
class GatewayPaths:
    dir: Path

    @property
    def config(self) -> Path:
        return self.dir / "haproxy.cfg"

    @property
    def client_keys(self) -> Path:
        return self.dir / "client-keys"

    @property
    def auth_list(self) -> Path:
        return self.dir / "auth.lst"

    @property
    def state(self) -> Path:
        return self.dir / "gateway.json"

    @property
    def pidfile(self) -> Path:
        return self.dir / "haproxy.pid"


def gateway_paths(home: Path) -> GatewayPaths:
    return GatewayPaths(home / "gateway")


@dataclass(frozen=True)
class Backend:
    """One serving box as the gateway sees it."""

    name: str
    address: str
    port: int
    key: str


@dataclass(frozen=True)
class GatewayConfig:
    listen: str
    backends: tuple[Backend, ...]
    skipped: tuple[str, ...]  # boxes with no API key yet (never `serve up`)
    path: Path

    def as_dict(self) -> dict[str, object]:
        return {
            "listen": self.listen,
            "config": str(self.path),
            "boxes": [b.name for b in self.backends],
            "skipped": list(self.skipped),
        }


def parse_listen(value: str) -> tuple[str, int]:
    """`ADDR:PORT` → (addr, port). Raises ConfigError naming the value."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen must be ADDR:PORT (like {DEFAULT_LISTEN}), not {value!r}")
    return host.strip("[]"), int(port)


def ensure_client_key(paths: GatewayPaths) -> str:
    """The gateway's first client key, made on first use."""
    return serve_core.ensure_key(paths.client_keys, prefix="sk-fleet-")


def client_keys(paths: GatewayPaths) -> list[str]:
    ensure_client_key(paths)
    return [line.strip() for line in paths.client_keys.read_text().splitlines() if line.strip()]


def bearer_digest(key: str) -> str:
    """What the gateway's ACL matches: sha256 of the whole `Authorization` value, in lower-case hex."""
    return hashlib.sha256(f"Bearer {_quoted(key)}".encode()).hexdigest()


def backends_for(hosts: Sequence[Host], home: Path) -> tuple[list[Backend], list[str]]:
    """A backend per box that has an API key (made by `serve up`); the others are listed as skipped."""
    backends, skipped = [], []
    for host in hosts:
        path = serve_core.key_path(home, host.name)
        if path.exists():
            backends.append(Backend(host.name, host.address, serve_core.PORT, path.read_text().strip()))
        else:
            skipped.append(host.name)
    return backends, skipped


def _socket_name(paths: GatewayPaths, box: str) -> str:
    tag = hashlib.sha256(str(paths.dir).encode()).hexdigest()[:10]
    return f"abns@sophon-gw-{tag}-{box}"


def _quoted(value: str) -> str:
    if any(c in value for c in "\"'\\ \n#"):
        raise ConfigError(f"a gateway value may not contain quotes, spaces or '#': {value!r}")
    return value


UNAUTHORIZED = (
    '{"error":{"message":"a valid gateway API key is required (Authorization: Bearer KEY)",'
    '"type":"invalid_request_error","param":null,"code":"invalid_api_key"}}'
)
NO_BOX = (
    '{"error":{"message":"no box of the fleet is serving right now","type":"server_error",'
    '"param":null,"code":"no_healthy_box"}}'
)


def render_config(paths: GatewayPaths, listen: str, backends: Sequence[Backend]) -> str:
    """haproxy.cfg for these boxes (pure)."""
    addr, port = parse_listen(listen)
    bind = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
    lines = [
        "# sophon-fleet gateway (written by `sophon-fleet gateway config`; do not edit, it is regenerated)",
        "global",
        "    log stderr format raw daemon warning",
        "    maxconn 2000",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option abortonclose          # a client that leaves while queued never reaches a box",
        "    option http-no-delay         # forward every token's chunk at once (no merging of small writes)",
        "    option redispatch 1",
        "    retries 2",
        "    # never started on a box: a refused connection (the per-box hop answers 503), a box loading",
        "    retry-on conn-failure empty-response 503",
        "    timeout connect 5s",
        "    timeout client 10m           # answers stream for minutes at ~8 tokens/s",
        "    timeout server 10m",
        "    timeout queue 10m            # requests wait here for the first free box",
        "    timeout http-request 30s",
        "    timeout http-keep-alive 30s",
        "    timeout check 3s",
        "",
        "frontend openai",
        f"    bind {bind}",
        "    # the key itself is never compared: its SHA-256 is looked up among the keys' digests, so the",
        "    # lookup's timing tells nothing usable about a key",
        f"    acl client_key req.hdr(authorization),digest(sha256),hex,lower -m str -f {paths.auth_list}",
        "    http-request return status 401 content-type application/json hdr WWW-Authenticate Bearer "
        f"string '{UNAUTHORIZED}' unless client_key",
        "    default_backend fleet",
        "",
        "backend fleet",
        "    balance leastconn",
        "    option httpchk GET /health",
        "    http-check expect status 200",
        "    option http-buffer-request   # the whole request is here, so a retry can resend it",
        "    # a box that fails a request (refused, 5xx) is out at once; its health check brings it back",
        "    default-server inter 1s fall 2 rise 1 observe layer7 error-limit 1 on-error mark-down",
        f"    errorfile 503 {paths.dir / 'no-box.http'}",
    ]
    for b in backends:
        lines.append(
            f"    server {_quoted(b.name)} {_socket_name(paths, b.name)} maxconn 1 "
            f"check addr {_quoted(b.address)} port {b.port}"
        )
    for b in backends:
        lines += [
            "",
            f"listen box-{b.name}",
            f"    bind {_socket_name(paths, b.name)}",
            f'    http-request set-header Authorization "Bearer {_quoted(b.key)}"',
            f"    server {b.name} {_quoted(b.address)}:{b.port}",
        ]
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_config(paths: GatewayPaths, hosts: Sequence[Host], home: Path, listen: str | None) -> GatewayConfig:
    """Write haproxy.cfg (and the key list) for `hosts`; `listen` None keeps the previous address.

    Raises:
        ConfigError: a bad listen address, or no box has been `serve up`'d yet.
    """
    paths.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if listen is None:
        listen = json.loads(paths.state.read_text())["listen"] if paths.state.exists() else DEFAULT_LISTEN
    parse_listen(listen)
    backends, skipped = backends_for(hosts, home)
    if not backends:
        raise ConfigError(
            "no box of the inventory has an API key: nothing to put behind the gateway",
            hint="run `sophon-fleet serve up -i INVENTORY` first",
        )
    _write_private(paths.auth_list, "".join(f"{bearer_digest(k)}\n" for k in client_keys(paths)))
    body = NO_BOX
    response = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
    )
    _write_private(paths.dir / "no-box.http", response)
    text = render_config(paths, listen, backends)
    check_config_text(paths, text)
    _write_private(paths.config, text)
    _write_private(paths.state, json.dumps({"listen": listen}) + "\n")
    return GatewayConfig(listen, tuple(backends), tuple(skipped), paths.config)


def check_config_text(paths: GatewayPaths, text: str) -> None:
    """`haproxy -c` on a candidate config. Raises FleetError with HAProxy's complaint."""
    candidate = paths.dir / "haproxy.cfg.candidate"
    _write_private(candidate, text)
    try:
        result = subprocess.run(
            [haproxy_binary(), "-c", "-q", "-f", str(candidate)], capture_output=True, text=True, timeout=30
        )
    finally:
        candidate.unlink(missing_ok=True)
    if result.returncode != 0:
        raise FleetError(
            f"haproxy rejected the generated config: {(result.stderr or result.stdout).strip()[-500:]}"
        )


def haproxy_binary() -> str:
    if not os.access(HAPROXY, os.X_OK):
        raise FleetError(f"{HAPROXY} is missing", hint="install Debian's haproxy package (`make setup` does)")
    return HAPROXY


def haproxy_command(paths: GatewayPaths) -> list[str]:
    """HAProxy in the foreground, master-worker (so `reload` keeps running streams), pid file for reload."""
    return [haproxy_binary(), "-W", "-db", "-f", str(paths.config), "-p", str(paths.pidfile)]


def run_gateway(paths: GatewayPaths) -> int:
    """Run HAProxy until it exits (Ctrl-C stops it); returns its exit code."""
    if not paths.config.exists():
        raise FleetError("no gateway config yet", hint="run `sophon-fleet gateway config -i INVENTORY` first")
    proc = subprocess.Popen(haproxy_command(paths))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=30)


def reload_gateway(paths: GatewayPaths) -> int:
    """Ask the running master to load the (already rewritten) config; returns its pid.

    Raises:
        FleetError: no gateway is running.
    """
    try:
        pid = int(paths.pidfile.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError) as exc:
        raise FleetError(
            "no running gateway to reload", hint="start it with `sophon-fleet gateway up`"
        ) from exc
    os.kill(pid, signal.SIGUSR2)
    return pid
