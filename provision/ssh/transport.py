"""SSH to a box: the one module that imports paramiko for box access (`sftp.py` reads download servers).

    Connector           one per run: trust store, timeouts, secrets; hands out one cached transport per host
    └── SshTransport    one box: run (as root via `sudo -S`), put_stream, get, open_exec, reconnect
    Transport           the seam the core is typed against (SshTransport, or a scripted fake in tests)

Host keys are checked against the user's `~/.ssh/known_hosts`, any `known_hosts` files the inventory names,
and the tool's own `$SOPHON_FLEET_HOME/known_hosts`. An unknown key is refused unless `accept_new` (then it
is pinned to the tool's file); a changed key is always refused, with both fingerprints and the fix.
Commands given as argument lists are `shlex.quote`d word by word; the sudo password only ever travels on
stdin. Library errors become ConnectError / HostKeyError / RemoteError with a hint.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import logging
import os
import select
import shlex
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

import paramiko

from provision.backoff import backoff_delay
from provision.errors import (
    ChannelBroken,
    ConfigError,
    ConnectError,
    FactError,
    HostKeyError,
    RemoteError,
    UnreachableError,
)
from provision.inventory.hosts import Host, parse_adhoc_host
from provision.ssh.sudo import sudo_error

log = logging.getLogger(__name__)
wire_log = logging.getLogger(f"{__name__}.wire")  # whole command texts (the probe is ~4 KB): -vv only

# AES-GCM measured +30-40% throughput over paramiko's CTR default on these machines.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
PREFERRED_KEX = ("curve25519-sha256", "curve25519-sha256@libssh.org")
CHUNK = 1 << 20
# What one command may print before we stop reading: facts and scripts print kilobytes; a box printing
# without end (a hostile or broken `bm_version`) must not fill the controller's memory.
MAX_OUTPUT = 8 << 20
MAX_LINE = 1 << 20  # one protocol line from a box (a receiver event, a chat token): far below this
# What paramiko raises when a connection dies under a read or a write: translated at this seam.
LINK_ERRORS = (OSError, EOFError, paramiko.SSHException)


@dataclass(frozen=True)
class Timeouts:
    """Seconds for each phase; `command` is the default per-command limit. `idle`: how long data we sent
    may stay unacknowledged by the box before the link counts as dead and the connection is closed (even
    when a write is blocked in the socket): a dead link is reported within about `idle` + `connect`."""

    connect: float = 10.0
    banner: float = 10.0
    auth: float = 15.0
    command: float = 120.0
    idle: float = 30.0


@dataclass(frozen=True)
class Retry:
    """Bounded connect retries with exponential backoff and jitter (refused / reset / no banner only)."""

    attempts: int = 3
    backoff: float = 0.25
    cap: float = 2.0

    def delays(self) -> Iterator[float]:
        for attempt in range(1, self.attempts):
            yield backoff_delay(attempt, self.backoff, self.cap)


@dataclass(frozen=True)
class Trust:
    """Where host keys are trusted from, and whether unknown ones may be pinned."""

    own_known_hosts: Path
    user_known_hosts: Path | None = None
    accept_new: bool = False


@dataclass(frozen=True)
class Result:
    """What a finished command did."""

    command: str
    exit_code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style `SHA256:...` fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(address: str, port: int) -> str:
    """How OpenSSH names a host in known_hosts (`addr` on port 22, `[addr]:port` otherwise)."""
    return address if port == 22 else f"[{address}]:{port}"


def quote_command(argv: Sequence[str]) -> str:
    """One shell command line from words, every word quoted."""
    return shlex.join(str(word) for word in argv)


def sudo_wrap(command: str, *, with_password: bool, reauth: bool = False) -> str:
    """Run `command` as root. With a password `sudo -S -p ''` reads it from stdin; without one `sudo -n`
    fails fast instead of hanging. The root command's stdin is /dev/null, so a password sudo did not need
    (NOPASSWD) can never reach it. `reauth` (-k) ignores a cached sudo ticket, so the password is checked."""
    inner = f"exec </dev/null; {command}"
    flags = ["-S", "-p", ""] if with_password else ["-n"]
    flags = ["-k", *flags] if reauth else flags
    return quote_command(["sudo", *flags, "--", "sh", "-c", inner])


class Transport(Protocol):
    """The seam between the core and a box: what every operation needs from a connection. `SshTransport`
    is the real one; unit tests use a scripted fake (tests/fakes.py) that refuses unscripted commands."""

    host: Host

    @property
    def become_password(self) -> str | None: ...

    def connect(self) -> None: ...

    def reconnect(self) -> None: ...

    def check_sudo(self) -> None: ...

    def close(self) -> None: ...

    def run(
        self,
        command: str | Sequence[str],
        *,
        sudo: bool = False,
        timeout: float | None = None,
        stdin: bytes | str | None = None,
        check: bool = True,
    ) -> Result: ...

    def put_stream(
        self,
        stream: BinaryIO | IO[bytes],
        remote_path: str,
        *,
        mode: int | None = None,
        timeout: float | None = None,
    ) -> int: ...

    def get(self, remote_path: str, local_path: Path, *, timeout: float | None = None) -> int: ...

    def open_exec(self, command: str | Sequence[str], *, timeout: float | None = None) -> Exec: ...


class SshTransport:
    """An SSH connection to one box, opened on first use and reused for every command (paramiko)."""

    def __init__(
        self,
        host: Host,
        *,
        trust: Trust,
        timeouts: Timeouts = Timeouts(),
        retry: Retry = Retry(),
        password: str | None = None,
        become_password: str | None = None,
        jump: SshTransport | None = None,
    ) -> None:
        self.host = host
        self.trust = trust
        self.timeouts = timeouts
        self.retry = retry
        self._password = password
        self._become_password = become_password
        self._jump = jump
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()
        self._sudo_checked = False

    def __repr__(self) -> str:
        return f"SshTransport({self.host.name} {self.host.target})"

    @property
    def become_password(self) -> str | None:
        """The sudo password for this box (for scripts that run `sudo -S` themselves), or None."""
        return self._become_password

    # ---- connection

    def connect(self) -> None:
        """Open the connection if it is not open (bounded retries). Raises ConnectError, HostKeyError."""
        with self._lock:
            if self._client is not None and self._active():
                return
            self._close_client()
            self._client = self._connect_with_retries()

    def reconnect(self) -> None:
        """Drop the connection (e.g. after a reboot) and open a new one."""
        self.close()
        self.connect()

    def close(self) -> None:
        with self._lock:
            self._close_client()

    def __enter__(self) -> SshTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _active(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return bool(transport and transport.is_active())

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _connect_with_retries(self) -> paramiko.SSHClient:
        delays = self.retry.delays()
        started = time.monotonic()
        while True:
            try:
                client = self._connect_once()
                log.debug(
                    "%s: connected to %s in %.3f s",
                    self.host.name,
                    self.host.target,
                    time.monotonic() - started,
                )
                return client
            except (
                ConnectionRefusedError,
                ConnectionResetError,
                EOFError,
                paramiko.SSHException,
                OSError,
            ) as exc:
                if not _transient(exc):
                    raise _connect_error(self.host, exc, self.timeouts) from exc
                delay = next(delays, None)
                if delay is None:
                    raise _connect_error(self.host, exc, self.timeouts) from exc
                log.debug("%s: connect failed (%s), retrying in %.2fs", self.host.name, exc, delay)
                time.sleep(delay)

    def _connect_once(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        self._load_known_hosts(client)
        client.set_missing_host_key_policy(_TrustPolicy(self.trust, self.host))
        sock = self._jump.open_tunnel(self.host.address, self.host.port) if self._jump else None
        try:
            client.connect(
                self.host.address,
                port=self.host.port,
                username=self.host.user,
                password=self._password,
                key_filename=list(self.host.keys) or None,  # type: ignore[arg-type]  # a list is accepted
                look_for_keys=not self.host.keys,
                allow_agent=True,
                timeout=self.timeouts.connect,
                banner_timeout=self.timeouts.banner,
                auth_timeout=self.timeouts.auth,
                channel_timeout=self.timeouts.connect,
                sock=sock,
                transport_factory=preferring_gcm,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise _changed_key_error(self.host, self.trust, exc) from exc
        except BaseException:
            client.close()
            raise
        transport = client.get_transport()
        if transport is not None:
            # SSH keepalives put data on the wire every idle/3 s, so a dead link leaves data unacknowledged
            # even while we only wait for output; the socket bounds and the watchdog then end it.
            transport.set_keepalive(max(1, int(self.timeouts.idle / 3)))
            if isinstance(transport.sock, socket.socket):
                bound_socket(transport.sock, self.timeouts.idle)
                WATCHDOG.watch(transport, self.timeouts.idle, self.host.name)
        return client

    def _load_known_hosts(self, client: paramiko.SSHClient) -> None:
        """Hand the client this host's trusted keys only, as paramiko would pick them from the files.

        paramiko checks its "system" keys (the user's and the inventory's files, first entry per key type
        wins) and falls back to its own keys (the tool's file) only when those hold none for the host.
        Loading whole files into every client made paramiko check each plain entry against every hashed
        one (an HMAC each) on every connection: 0.1 s of CPU for 16 boxes with a 32-entry hashed
        ~/.ssh/known_hosts. So each file is parsed once per process (`_known_hosts_file`) and only this
        host's entries are added.
        """
        name = known_hosts_name(self.host.address, self.host.port)
        user = self.trust.user_known_hosts
        system = [user] if user is not None and user.is_file() else []
        for extra in self.host.known_hosts:
            if not Path(extra).is_file():
                raise ConfigError(
                    f"known_hosts file {extra} does not exist", key=f"{self.host.name}.known_hosts"
                )
            system.append(Path(extra))
        keys = _trusted_keys(name, system)
        if not keys and self.trust.own_known_hosts.is_file():
            keys = _trusted_keys(name, [self.trust.own_known_hosts])
        for keytype, key in keys.items():
            client.get_host_keys().add(name, keytype, key)

    def open_tunnel(self, address: str, port: int) -> paramiko.Channel:
        """A direct-tcpip channel through this box (this box is a ProxyJump for another)."""
        self.connect()
        assert self._client is not None
        transport = self._client.get_transport()
        assert transport is not None
        try:
            return transport.open_channel(
                "direct-tcpip", (address, port), ("127.0.0.1", 0), timeout=self.timeouts.connect
            )
        except (paramiko.SSHException, OSError) as exc:
            raise ConnectError(
                f"{self.host.name}: cannot open a tunnel to {address}:{port}: {exc}",
                hint="check the ProxyJump host can reach the box and allows TCP forwarding",
            ) from exc

    def _session(self, timeout: float) -> paramiko.Channel:
        self.connect()
        assert self._client is not None
        transport = self._client.get_transport()
        try:
            assert transport is not None
            channel = transport.open_session(timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(
                f"{self.host.name}: connection lost ({str(exc) or type(exc).__name__})",
                hint="the box may be rebooting, or its link is down (no answer within "
                f"{self.timeouts.idle:g} s closes a connection)",
            ) from exc
        channel.settimeout(timeout)
        return channel

    # ---- commands

    def check_sudo(self) -> None:
        """Once per Transport, before the first root command: does sudo take this box's password (or need
        none)? Raises SudoError ("sudo refused this password" / "none was given"), ConnectError."""
        if self._sudo_checked:
            return
        password = self._become_password
        result = self._exec(
            sudo_wrap("true", with_password=password is not None, reauth=True),
            (password + "\n").encode() if password is not None else b"",
            "sudo true",
            self.timeouts.command,
            MAX_OUTPUT,
        )
        if not result.ok:
            raise sudo_error(self.host.name, result.stderr) or command_failed(self.host, result, sudo=True)
        self._sudo_checked = True

    def run(
        self,
        command: str | Sequence[str],
        *,
        sudo: bool = False,
        timeout: float | None = None,
        stdin: bytes | str | None = None,
        check: bool = True,
        max_output: int = MAX_OUTPUT,
    ) -> Result:
        """Run a command and wait for it. A list is quoted word by word; a string is taken as shell code.

        `sudo=True` runs it as root (`sudo -S`, password on stdin; stdin data is not allowed then).
        Raises RemoteError when it exits non-zero (with `check`) or times out, FactError when it prints
        more than `max_output` bytes (on stdout or stderr; reading stops there), ConnectError when the box
        cannot be reached.
        """
        text = command if isinstance(command, str) else quote_command(command)
        payload = stdin.encode() if isinstance(stdin, str) else (stdin or b"")
        wire = text
        if sudo:
            if stdin is not None:
                raise ValueError("run(sudo=True) takes no stdin: the sudo password uses it")
            self.check_sudo()
            wire = sudo_wrap(text, with_password=self._become_password is not None)
            payload = (self._become_password + "\n").encode() if self._become_password is not None else b""
        limit = self.timeouts.command if timeout is None else timeout
        log.debug("%s: run%s: %s", self.host.name, " (sudo)" if sudo else "", _short(text, 160))
        wire_log.debug("%s: the whole command: %s", self.host.name, text)
        result = self._exec(wire, payload, text, limit, max_output)
        log.debug("%s: exit %d after %.3f s", self.host.name, result.exit_code, result.seconds)
        if check and not result.ok:
            raise command_failed(self.host, result, sudo=sudo)
        return result

    def _exec(self, wire: str, payload: bytes, text: str, limit: float, max_output: int) -> Result:
        """Run the command line `wire` (shown as `text`), send `payload` on stdin, wait up to `limit` s."""
        started = time.monotonic()
        channel = self._session(limit)
        try:
            channel.exec_command(wire)
            _send_stdin(channel, payload)
            out, err = _drain(channel, started + limit, max_output)
            code = channel.recv_exit_status()
            if code == -1 and not self._active():
                raise ConnectError(f"{self.host.name}: connection lost during `{_short(text)}`")
        except _TooMuchOutput as exc:
            raise FactError(
                f"{self.host.name}: `{_short(text)}` printed more than {max_output >> 20} MiB; "
                "stopped reading",
                hint="the box's tools print far more than they should: check it with `doctor`",
            ) from exc
        except TimeoutError as exc:
            raise RemoteError(
                f"{self.host.name}: `{_short(text)}` timed out after {limit:g} s",
                hint="the box may be overloaded or hung; raise the timeout or check it with `doctor`",
            ) from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(f"{self.host.name}: connection lost during `{_short(text)}`: {exc}") from exc
        finally:
            close_channel(channel)
        return Result(
            text, code, out.decode(errors="replace"), err.decode(errors="replace"), time.monotonic() - started
        )

    def put_stream(
        self,
        stream: BinaryIO | IO[bytes],
        remote_path: str,
        *,
        mode: int | None = None,
        timeout: float | None = None,
    ) -> int:
        """Write a stream to `remote_path` (via `<path>.part`, renamed when complete); returns bytes sent."""
        part = f"{remote_path}.part"
        chmod = f" && chmod {mode:o} {shlex.quote(part)}" if mode is not None else ""
        command = (
            f"cat > {shlex.quote(part)}{chmod} && mv -f -- {shlex.quote(part)} {shlex.quote(remote_path)}"
        )
        limit = self.timeouts.command if timeout is None else timeout
        channel = self._session(limit)
        sent = 0
        try:
            channel.exec_command(command)
            for chunk in iter(lambda: stream.read(CHUNK), b""):
                send_all(channel, chunk)
                sent += len(chunk)
            channel.shutdown_write()
            _, err = _drain(channel, time.monotonic() + limit)
            code = channel.recv_exit_status()
        except _TooMuchOutput as exc:
            raise FactError(f"{self.host.name}: writing {remote_path} printed more than expected") from exc
        except TimeoutError as exc:
            raise RemoteError(f"{self.host.name}: writing {remote_path} timed out after {limit:g} s") from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(
                f"{self.host.name}: connection lost while writing {remote_path}: {exc}"
            ) from exc
        finally:
            close_channel(channel)
        if code != 0:
            raise RemoteError(
                f"{self.host.name}: cannot write {remote_path}: {err.decode(errors='replace').strip()}"
            )
        return sent

    def get(self, remote_path: str, local_path: Path, *, timeout: float | None = None) -> int:
        """Copy a remote file to `local_path` (via `.part`, renamed when complete); returns its size."""
        limit = self.timeouts.command if timeout is None else timeout
        part = Path(f"{local_path}.part")
        channel = self._session(limit)
        size = 0
        deadline = time.monotonic() + limit
        try:
            channel.exec_command(quote_command(["cat", "--", remote_path]))
            channel.shutdown_write()
            with open(part, "wb") as handle:
                for chunk in _stdout_chunks(channel, deadline):
                    handle.write(chunk)
                    size += len(chunk)
            err = channel.recv_stderr(65536) if channel.recv_stderr_ready() else b""
            code = channel.recv_exit_status()
        except TimeoutError as exc:
            part.unlink(missing_ok=True)
            raise RemoteError(f"{self.host.name}: reading {remote_path} timed out after {limit:g} s") from exc
        except (paramiko.SSHException, EOFError, ConnectionError) as exc:  # the connection broke mid-file
            part.unlink(missing_ok=True)
            raise ConnectError(f"{self.host.name}: connection lost reading {remote_path}: {exc!r}") from exc
        finally:
            close_channel(channel)
        if code != 0:
            part.unlink(missing_ok=True)
            raise RemoteError(
                f"{self.host.name}: cannot read {remote_path}: {err.decode(errors='replace').strip()}"
            )
        os.replace(part, local_path)
        return size

    def open_exec(self, command: str | Sequence[str], *, timeout: float | None = None) -> Exec:
        """A raw exec channel for streaming protocols (receivers, `chat serve --stdio`); caller closes it."""
        text = command if isinstance(command, str) else quote_command(command)
        channel = self._session(self.timeouts.command if timeout is None else timeout)
        channel.settimeout(timeout)
        try:
            channel.exec_command(text)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            close_channel(channel)
            raise ConnectError(f"{self.host.name}: cannot start `{_short(text)}`: {exc}") from exc
        return Exec(self.host.name, text, channel)


def close_channel(channel: paramiko.Channel) -> None:
    """Close a channel. On a connection that died under it, paramiko's close still writes its close message
    and raises (EOFError from the packet writer): the channel is gone all the same, and a failure to say
    goodbye must not replace the error being reported, nor leave the SSH seam as a library error."""
    try:
        channel.close()
    except LINK_ERRORS:
        log.debug("closing a channel on a dead connection", exc_info=True)


class ChannelFile:
    """One of a channel's files (bytes): paramiko's, except that a connection dying under a read, a write or
    the close is ChannelBroken, never the library's own error (which would leave the SSH seam)."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._raw, method)(*args)
        except LINK_ERRORS as exc:
            raise ChannelBroken(str(exc) or type(exc).__name__) from exc

    def read(self, size: int = -1) -> bytes:
        return self._call("read", size)

    def readline(self, size: int = -1) -> bytes:
        return self._call("readline", size)

    def write(self, data: bytes) -> None:
        self._call("write", data)

    def flush(self) -> None:
        self._call("flush")

    def close(self) -> None:
        self._call("close")


@dataclass
class Exec:
    """A running remote command: file-like stdin/stdout/stderr (ChannelFile) and its exit status."""

    host: str
    command: str
    channel: paramiko.Channel
    stdin: ChannelFile = field(init=False)
    stdout: ChannelFile = field(init=False)
    stderr: ChannelFile = field(init=False)

    def __post_init__(self) -> None:
        self.stdin = ChannelFile(self.channel.makefile_stdin("wb"))
        self.stdout = ChannelFile(self.channel.makefile("rb"))
        self.stderr = ChannelFile(self.channel.makefile_stderr("rb"))

    def close_stdin(self) -> None:
        try:
            self.channel.shutdown_write()
        except LINK_ERRORS as exc:
            raise ChannelBroken(str(exc) or type(exc).__name__) from exc

    # the Channel interface of `assets push` (send / recv_line / exit_status / close): a connection that
    # dies under a read or a write is ChannelBroken (reopen and resume), never the library's own error
    def send(self, data: bytes) -> None:
        try:
            send_all(self.channel, data)  # packet-sized pieces: paramiko's `sendall` alone re-copies
        except LINK_ERRORS as exc:  # paramiko's write_all raises EOFError when the connection is gone
            raise ChannelBroken(str(exc) or type(exc).__name__) from exc

    def recv_line(self) -> bytes:
        """One line from stdout (b"" at end of stream), at most MAX_LINE bytes."""
        line = self.stdout.readline(MAX_LINE)
        if len(line) >= MAX_LINE and not line.endswith(b"\n"):
            raise FactError(f"{self.host}: a line longer than {MAX_LINE >> 10} KiB; refusing to read more")
        return line

    def exit_status(self) -> int:
        return self.channel.recv_exit_status()

    def wait(self, timeout: float | None = None) -> int:
        """Exit status (-1 if the connection dropped). Raises RemoteError on timeout."""
        if not self.channel.status_event.wait(timeout):
            raise RemoteError(f"{self.host}: `{_short(self.command)}` did not finish within {timeout:g} s")
        return self.channel.recv_exit_status()

    def close(self) -> None:
        close_channel(self.channel)

    def __enter__(self) -> Exec:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Connector:
    """One per CLI run: builds and caches one Transport per host, so a run reuses its connections."""

    def __init__(
        self,
        trust: Trust,
        *,
        timeouts: Timeouts = Timeouts(),
        retry: Retry = Retry(),
        become_password: str | None = None,
        lookup: Callable[[str], Host | None] = lambda name: None,
    ) -> None:
        self.trust = trust
        self.timeouts = timeouts
        self.retry = retry
        self.become_password = become_password  # asked once per run by the CLI, for hosts that name none
        self.lookup = lookup  # resolves a ProxyJump name to an inventory host
        self._cache: dict[str, SshTransport] = {}
        self._lock = threading.Lock()

    def transport(self, host: Host) -> Transport:
        with self._lock:
            if host.name not in self._cache:
                self._cache[host.name] = self._build(host, depth=0)
            return self._cache[host.name]

    def _build(self, host: Host, depth: int) -> SshTransport:
        if depth > 4:
            raise ConfigError(f"{host.name}: proxy_jump chain is too long (a loop?)", key="proxy_jump")
        jump = None
        if host.proxy_jump:
            hops = [h.strip() for h in host.proxy_jump.split(",") if h.strip()]
            jump_host = self.lookup(hops[-1]) or parse_adhoc_host(hops[-1])
            if len(hops) > 1:
                jump_host = _with_jump(jump_host, ",".join(hops[:-1]))
            jump = self._build(jump_host, depth + 1)
        return SshTransport(
            host,
            trust=self.trust,
            timeouts=self.timeouts,
            retry=self.retry,
            password=host.password.resolve() if host.password else None,
            become_password=(host.become_password.resolve() if host.become_password else None)
            or self.become_password,
            jump=jump,
        )

    def close_all(self) -> None:
        with self._lock:
            for transport in self._cache.values():
                transport.close()
            self._cache.clear()

    def __enter__(self) -> Connector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_all()


# ---------------------------------------------------------------------------------------------- dead links


def bound_socket(sock: socket.socket, idle: float) -> None:
    """Make the kernel end a connection whose sent data stays unacknowledged for `idle` s (TCP_USER_TIMEOUT;
    a blocked write then fails instead of retransmitting for ~15 min), and probe a silent one (keepalive)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    options = {
        "TCP_USER_TIMEOUT": int(idle * 1000),
        "TCP_KEEPIDLE": max(1, int(idle / 3)),
        "TCP_KEEPINTVL": max(1, int(idle / 6)),
        "TCP_KEEPCNT": 3,
    }
    for name, value in options.items():
        if hasattr(socket, name):  # Linux has all four; elsewhere the watchdog alone bounds it
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


_TCP_INFO = struct.Struct("8B24I")  # struct tcp_info: 8 u8 fields, then u32 tcpi_rto ... (linux/tcp.h)
_UNACKED, _LAST_ACK_RECV = 4, 12  # indexes of tcpi_unacked and tcpi_last_ack_recv (ms) among the u32s


def stalled_for(sock: socket.socket) -> float | None:
    """Seconds the oldest unacknowledged data on `sock` has waited for an ACK (0 when nothing is
    outstanding); None where TCP_INFO is not available."""
    if not hasattr(socket, "TCP_INFO"):
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)
    except OSError:
        return None
    if len(raw) < _TCP_INFO.size:
        return None
    words = _TCP_INFO.unpack(raw)[8:]
    return words[_LAST_ACK_RECV] / 1000.0 if words[_UNACKED] else 0.0


class _Watchdog:
    """One thread for every open connection: closes one whose socket has had data unacknowledged for longer
    than its idle limit. The kernel's TCP_USER_TIMEOUT normally fires first; this is the backstop that does
    not depend on it, and closing the transport also wakes a write blocked inside paramiko."""

    def __init__(self) -> None:
        self._watched: dict[int, tuple[paramiko.Transport, float, str]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, transport: paramiko.Transport, idle: float, name: str) -> None:
        with self._lock:
            self._watched[id(transport)] = (transport, idle, name)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ssh-watchdog", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(1.0)
            with self._lock:
                for key, (transport, idle, name) in list(self._watched.items()):
                    if not transport.is_active():
                        del self._watched[key]
                        continue
                    sock = transport.sock
                    stalled = stalled_for(sock) if isinstance(sock, socket.socket) else None
                    if stalled is not None and stalled > idle:
                        log.warning(
                            "%s: no ACK for %.0f s: the link is dead, closing the connection", name, stalled
                        )
                        del self._watched[key]
                        transport.close()
                if not self._watched:
                    self._thread = None
                    return


WATCHDOG = _Watchdog()


# ---------------------------------------------------------------------------------------------- helpers


def _with_jump(host: Host, proxy_jump: str) -> Host:
    from dataclasses import replace

    return replace(host, proxy_jump=proxy_jump)


def preferring_gcm(sock: Any, **kwargs: Any) -> paramiko.Transport:
    """A paramiko Transport offering AES-GCM and curve25519 first (GCM: +30-40% throughput over CTR)."""
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    options.ciphers = _prefer(options.ciphers, PREFERRED_CIPHERS)
    options.kex = _prefer(options.kex, PREFERRED_KEX)
    return transport


def _prefer(available: Sequence[str], first: Sequence[str]) -> tuple[str, ...]:
    head = tuple(name for name in first if name in available)
    return head + tuple(name for name in available if name not in head)


_KNOWN_HOSTS_LOCK = threading.Lock()
_KNOWN_HOSTS: dict[Path, tuple[tuple[int, int, int], paramiko.HostKeys]] = {}


def _known_hosts_file(path: Path) -> paramiko.HostKeys:
    """A known_hosts file parsed once per process, again when it changes (inode, size, mtime)."""
    stat = path.stat()
    identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    with _KNOWN_HOSTS_LOCK:
        cached = _KNOWN_HOSTS.get(path)
        if cached is None or cached[0] != identity:
            cached = _KNOWN_HOSTS[path] = (identity, paramiko.HostKeys(str(path)))
        return cached[1]


def _trusted_keys(name: str, files: Sequence[Path]) -> dict[str, paramiko.PKey]:
    """Key type -> key for host `name` in `files`, the first entry of each type winning (paramiko's rule)."""
    keys: dict[str, paramiko.PKey] = {}
    for path in files:
        for keytype, key in (_known_hosts_file(path).lookup(name) or {}).items():
            keys.setdefault(keytype, key)
    return keys


class _TrustPolicy(paramiko.MissingHostKeyPolicy):
    """Unknown key: refuse, or with accept_new pin it to the tool's known_hosts."""

    _file_lock = threading.Lock()

    def __init__(self, trust: Trust, host: Host) -> None:
        self.trust = trust
        self.host = host

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if not self.trust.accept_new:
            raise HostKeyError(
                f"{self.host.name} ({hostname}): unknown host key {key.get_name()} {fingerprint(key)}, "
                "refusing to connect",
                hint="if this is the box you expect, run again with --accept-new to pin its key to "
                f"{self.trust.own_known_hosts}",
            )
        self.pin(hostname, key)
        log.info("%s: pinned host key %s %s", self.host.name, key.get_name(), fingerprint(key))

    def pin(self, hostname: str, key: paramiko.PKey) -> None:
        path = self.trust.own_known_hosts
        path.parent.mkdir(parents=True, exist_ok=True)
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        with self._file_lock, open(path, "a", encoding="utf-8") as handle:
            os.chmod(path, 0o600)
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.write(line)


def _changed_key_error(host: Host, trust: Trust, exc: paramiko.BadHostKeyException) -> HostKeyError:
    name = known_hosts_name(host.address, host.port)
    files = [str(p) for p in _known_hosts_files(host, trust) if _has_entry(p, name)]
    fix = "; ".join(f"ssh-keygen -R {shlex.quote(name)} -f {shlex.quote(f)}" for f in files) or (
        f"ssh-keygen -R {shlex.quote(name)}"
    )
    return HostKeyError(
        f"{host.name} ({name}): HOST KEY CHANGED, refusing to connect. Known: {exc.expected_key.get_name()} "
        f"{fingerprint(exc.expected_key)}; offered: {exc.key.get_name()} {fingerprint(exc.key)}",
        hint=f"if the box was reflashed or replaced (and only then), remove the old key: {fix} "
        "and connect again with --accept-new",
    )


def _known_hosts_files(host: Host, trust: Trust) -> list[Path]:
    files = [trust.user_known_hosts] if trust.user_known_hosts else []
    return [*files, *(Path(p) for p in host.known_hosts), trust.own_known_hosts]


def _has_entry(path: Path, name: str) -> bool:
    try:
        return paramiko.HostKeys(str(path)).lookup(name) is not None
    except (OSError, paramiko.SSHException):
        return False


def _transient(exc: BaseException) -> bool:
    """Worth another connect attempt: refused, reset, or no SSH banner (sshd starting or overloaded)."""
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return all(isinstance(e, ConnectionRefusedError | ConnectionResetError) for e in exc.errors.values())
    if isinstance(exc, ConnectionRefusedError | ConnectionResetError | EOFError):
        return True
    return isinstance(exc, paramiko.SSHException) and "banner" in str(exc).lower()


def _connect_error(host: Host, exc: BaseException, timeouts: Timeouts) -> ConnectError:
    where = f"{host.name} ({host.target})"
    if isinstance(exc, HostKeyError | ConnectError):
        return exc
    if isinstance(exc, paramiko.AuthenticationException):
        return ConnectError(
            f"{where}: authentication failed ({exc})",
            hint="check the key (key / ansible_ssh_private_key_file), the agent, "
            "or password_env / password_file",
        )
    if isinstance(exc, socket.timeout | TimeoutError):
        return UnreachableError(
            f"{where}: no answer within {timeouts.connect:g} s",
            hint="is the box powered on and on this network? (ping it; check the address)",
        )
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError) and exc.errors:
        first = next(iter(exc.errors.values()))
        if not isinstance(first, paramiko.ssh_exception.NoValidConnectionsError):
            return _connect_error(host, first, timeouts)
    if isinstance(exc, socket.gaierror):
        return ConnectError(
            f"{host.name}: cannot resolve the name {host.address!r} (DNS: {exc.strerror or exc})",
            hint="check the spelling; a name from an inventory needs -i INVENTORY, an address works as it is",
        )
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError | ConnectionRefusedError):
        return ConnectError(f"{where}: connection refused", hint="is sshd running on the box, on this port?")
    if isinstance(exc, OSError) and exc.errno is not None:
        return ConnectError(
            f"{where}: {os.strerror(exc.errno)}", hint="check the address and the network route"
        )
    return ConnectError(f"{where}: SSH failed: {exc}")


def command_failed(host: Host, result: Result, *, sudo: bool = False) -> RemoteError:
    """The RemoteError for a command that exited non-zero (stderr tail included)."""
    tail = result.stderr.strip().splitlines()[-3:]
    refused = sudo_error(host.name, result.stderr, doing=_short(result.command)) if sudo else None
    if refused is not None:
        return refused
    return RemoteError(
        f"{host.name}: `{_short(result.command)}` exited {result.exit_code}: {' / '.join(tail)}"
    )


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def send_all(channel: paramiko.Channel, data: bytes) -> None:
    """`sendall` in packet-sized pieces: paramiko's own re-copies the rest of the buffer after every
    32 KiB packet, which made large writes quadratic (measured 0.6x -> 1.25x scp in `assets push`). A piece
    is what one packet carries (paramiko sends at most max packet - 64 bytes), so no piece splits in two."""
    piece = max(1024, getattr(channel, "out_max_packet_size", 32768) - 64)
    view = memoryview(data)
    for start in range(0, len(view), piece):
        channel.sendall(view[start : start + piece])  # type: ignore[arg-type]  # any buffer works: no copy


def _send_stdin(channel: paramiko.Channel, payload: bytes) -> None:
    """Send stdin and EOF; a command that exited without reading it (e.g. `true`) is not an error."""
    try:
        if payload:
            channel.sendall(payload)
        channel.shutdown_write()
    except OSError:
        if not (channel.closed or channel.exit_status_ready()):
            raise


def _wait_readable(channel: paramiko.Channel, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    select.select([channel], [], [], min(remaining, 1.0))


class _TooMuchOutput(Exception):
    """A command printed more than its limit."""


def _drain(channel: paramiko.Channel, deadline: float, limit: int = MAX_OUTPUT) -> tuple[bytes, bytes]:
    """All of stdout and stderr until the command exits; TimeoutError past the deadline, _TooMuchOutput
    past `limit` bytes on either stream."""
    out: list[bytes] = []
    err: list[bytes] = []
    sizes = [0, 0]
    while True:
        while channel.recv_ready():
            out.append(channel.recv(CHUNK))
            sizes[0] += len(out[-1])
        while channel.recv_stderr_ready():
            err.append(channel.recv_stderr(CHUNK))
            sizes[1] += len(err[-1])
        if max(sizes) > limit:
            raise _TooMuchOutput
        if channel.exit_status_ready() and (channel.eof_received or channel.closed):
            if not channel.recv_ready() and not channel.recv_stderr_ready():
                return b"".join(out), b"".join(err)
            continue
        _wait_readable(channel, deadline)


def _stdout_chunks(channel: paramiko.Channel, deadline: float) -> Iterator[bytes]:
    while True:
        if channel.recv_ready():
            chunk = channel.recv(CHUNK)
            if chunk:
                yield chunk
                continue
        if channel.eof_received or channel.closed:
            while channel.recv_ready():
                yield channel.recv(CHUNK)
            return
        _wait_readable(channel, deadline)
