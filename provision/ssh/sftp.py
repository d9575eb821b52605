"""Reading one file over SFTP from a download server (the vendor's dfss servers, or a mirror of them).

The same SSH stack as the boxes' (`transport.py`): AES-GCM and curve25519 first, host keys named and pinned
like the tool's own known_hosts, errors translated to ours. The servers publish no host keys, so a key is
trusted on first use and pinned in the given known_hosts file; a changed key is refused (HostKeyError).
Integrity never rests on the channel: the caller checks every byte against a pinned sha256.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import paramiko

from provision.errors import ConnectError, HostKeyError, TransferFailed
from provision.ssh.transport import fingerprint, known_hosts_name, preferring_gcm

_known_hosts_lock = threading.Lock()  # several servers are tried at once; one writer at a time


@dataclass(frozen=True)
class SftpLogin:
    host: str
    port: int
    user: str
    password: str | None = None  # the dfss servers' published login
    identity: Path | None = None  # a private key instead of the password


class RemoteFile:
    """An open file on an SFTP server, positioned at `offset`, read in blocks; `close()` ends the session."""

    def __init__(
        self, transport: paramiko.Transport, handle: paramiko.SFTPFile, size: int, offset: int
    ) -> None:
        self._transport, self._handle = transport, handle
        self.size, self.offset = size, offset

    def read(self, n: int) -> bytes:
        """Up to `n` bytes (b"" at the end). Raises TransferFailed."""
        try:
            return self._handle.read(n)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise TransferFailed(str(exc) or type(exc).__name__) from exc

    def close(self) -> None:
        self._transport.close()


def open_remote_file(
    login: SftpLogin, path: str, offset: int, *, known_hosts: Path | None, timeout: float
) -> RemoteFile:
    """Connect, authenticate, open `path` and seek to `offset` (clipped to the size), with read-ahead.

    Raises:
        HostKeyError: the server's key differs from the one pinned in `known_hosts`.
        ConnectError: the server cannot be reached, refuses the login, or has no such file.
    """
    transport = None
    try:
        sock = socket.create_connection((login.host, login.port), timeout=timeout)
        transport = preferring_gcm(sock)
        transport.start_client(timeout=timeout)
        if known_hosts is not None:
            _trust_on_first_use(known_hosts, known_hosts_name(login.host, login.port), transport)
        _authenticate(transport, login)
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        channel = sftp.get_channel()
        assert channel is not None
        channel.settimeout(timeout)
        size = sftp.stat(path).st_size or 0
        handle = sftp.open(path, "rb")
        offset = min(offset, size)
        handle.seek(offset)
        # Uncapped read-ahead: a low max_concurrent_requests (64) collapses to ~5 MB/s (measured here).
        handle.prefetch(size)
        return RemoteFile(transport, handle, size, offset)
    except (HostKeyError, ConnectError):
        if transport:
            transport.close()
        raise
    except (OSError, EOFError, paramiko.SSHException) as exc:
        if transport:
            transport.close()
        raise ConnectError(f"sftp://{login.user}@{login.host}:{login.port}/{path}: {exc}") from exc


def _authenticate(transport: paramiko.Transport, login: SftpLogin) -> None:
    try:
        if login.identity:
            transport.auth_publickey(login.user, load_private_key(login.identity))
        else:
            transport.auth_password(login.user, login.password or "")
    except paramiko.AuthenticationException as exc:
        raise ConnectError(f"{login.host}:{login.port}: login as {login.user} refused") from exc


def _trust_on_first_use(known_hosts: Path, name: str, transport: paramiko.Transport) -> None:
    """Pin an unknown key; refuse a changed one."""
    key = transport.get_remote_server_key()
    with _known_hosts_lock:
        keys = paramiko.HostKeys()
        if known_hosts.exists():
            keys.load(str(known_hosts))
        known = keys.lookup(name)
        if known is None or key.get_name() not in known:
            keys.add(name, key.get_name(), key)
            known_hosts.parent.mkdir(parents=True, exist_ok=True)
            keys.save(str(known_hosts))
        elif known[key.get_name()] != key:
            raise HostKeyError(
                f"{name}: host key changed (offered {key.get_name()} {fingerprint(key)}, pinned in "
                f"{known_hosts}); refusing this server",
                hint=f"if the server's key really changed: ssh-keygen -R {name} -f {known_hosts}",
            )


def load_private_key(path: Path) -> paramiko.PKey:
    """A private key file of any type paramiko reads. Raises ConnectError."""
    try:
        return paramiko.PKey.from_path(str(path))
    except (OSError, paramiko.SSHException, ValueError) as exc:
        raise ConnectError(f"{path}: not a private key paramiko can read ({exc})") from exc
