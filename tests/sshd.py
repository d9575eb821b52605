"""A throwaway OpenSSH server on a loopback address (any of 127.0.0.0/8), for transport tests.

`start_sshd(tmp)` returns a running server; `stop()` kills it and removes its files, also after a failure.
Needs root (sshd) and /usr/sbin/sshd; tests skip otherwise.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"


@dataclass
class Sshd:
    address: str
    port: int
    dir: Path
    client_key: Path
    host_key_pub: str  # "ssh-ed25519 AAAA..."
    process: subprocess.Popen | None = None

    def known_hosts_line(self) -> str:
        name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{name} {self.host_key_pub}\n"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


def available() -> bool:
    return os.geteuid() == 0 and Path(SSHD).exists() and shutil.which("ssh-keygen") is not None


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def start_sshd(base: Path, *, extra_config: str = "") -> Sshd:
    """Start sshd on 127.0.0.x:port with its own host key; root logs in with the returned client key."""
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    base.mkdir(parents=True, exist_ok=True)
    address = f"127.0.{random.randint(1, 250)}.{random.randint(2, 250)}"
    port = free_port(address)
    keygen(base / "host_key")
    keygen(base / "client_key")
    shutil.copy(base / "client_key.pub", base / "authorized_keys")
    (base / "sshd_config").write_text(
        f"ListenAddress {address}:{port}\nHostKey {base}/host_key\nPidFile {base}/sshd.pid\n"
        f"AuthorizedKeysFile {base}/authorized_keys\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "Subsystem sftp internal-sftp\nLogLevel VERBOSE\nMaxStartups 100:30:200\nMaxSessions 50\n"
        f"{extra_config}"
    )
    pub = " ".join((base / "host_key.pub").read_text().split()[:2])
    server = Sshd(address, port, base, base / "client_key", pub)
    log = open(base / "sshd.log", "wb")  # noqa: SIM115 - closed with the process
    server.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(base / "sshd_config")], stderr=log)
    log.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=0.2) as sock:
                if sock.recv(4).startswith(b"SSH"):
                    return server
        except OSError:
            time.sleep(0.02)
    server.stop()
    raise RuntimeError(f"sshd did not start on {address}:{port}")
