"""A real OpenSSH sshd serving a directory over SFTP (dfss-style mirror for tests and the simulator).

    with SftpServer(tree_root, workdir, host="127.0.0.9") as server:
        server.port, server.client_key  # key auth as the current user (root in the tests)

`Subsystem sftp internal-sftp -d <root>` makes dfss's relative paths (`sophon-demo/ChatGLM4/...`) resolve
under the tree. Password auth as user `open` (what the real dfss servers use) needs a system user: inside
a simulated box's overlay root that is harmless, on the host it is not, so this helper uses keys.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class SftpServer:
    root: Path
    workdir: Path
    host: str = "127.0.0.1"
    port: int = 0
    extra_config: str = ""
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def client_key(self) -> Path:
        return self.workdir / "client_key"

    def start(self, timeout: float = 10.0) -> SftpServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's compiled-in privsep dir
        for key in ("host_key", "client_key"):
            if not (self.workdir / key).exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.workdir / key)], check=True
                )
        (self.workdir / "authorized_keys").write_text((self.workdir / "client_key.pub").read_text())
        self.port = self.port or free_port(self.host)
        config = self.workdir / "sshd_config"
        config.write_text(
            f"ListenAddress {self.host}:{self.port}\nHostKey {self.workdir / 'host_key'}\n"
            f"PidFile {self.workdir / 'sshd.pid'}\nAuthorizedKeysFile {self.workdir / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nLogLevel ERROR\nMaxStartups 100:30:200\nMaxSessions 50\n"
            f"Subsystem sftp internal-sftp -d {Path(self.root).resolve()}\n{self.extra_config}"
        )
        with open(self.workdir / "sshd.log", "ab") as log:
            self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.workdir / 'sshd.log').read_text()[-500:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                    if sock.recv(4).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"sshd on {self.host}:{self.port} did not answer within {timeout} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def __enter__(self) -> SftpServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def is_root() -> bool:
    return os.geteuid() == 0
