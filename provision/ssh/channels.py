"""Channels to a command running on a box: what `push` needs from a transport.

`Channel` is anything with `send`, `recv_line`, `exit_status`, `close` (and optionally `send_file`, a
zero-copy fast path): `LocalChannel` runs a local subprocess (tests, or the OpenSSH client as a bulk
transport); an SSH exec channel is `provision.ssh.transport.Exec` itself (from `Transport.open_exec`), and
`transport_opener` turns a Transport into an `Opener` (command -> Channel) that reopens a lost connection.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from typing import Any, Protocol

from provision.errors import ChannelBroken, ConnectError, UnreachableError


class Channel(Protocol):
    """A command running on a box with its stdin/stdout; what push needs from a transport."""

    def send(self, data: bytes) -> None: ...

    def recv_line(self) -> bytes:
        """One line from stdout (b"" at end of stream)."""
        ...

    def exit_status(self) -> int: ...

    def close(self) -> None: ...


Opener = Callable[[str], Channel]  # shell command -> running channel


class LocalChannel:
    """A local subprocess as a channel (`bash -c CMD`): the receiver without SSH, for tests."""

    def __init__(self, command: str) -> None:
        self.proc = subprocess.Popen(
            ["bash", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin, self._stdout = self.proc.stdin, self.proc.stdout

    def send(self, data: bytes) -> None:
        try:
            self._stdin.write(data)
            self._stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise ChannelBroken(str(exc)) from exc

    def recv_line(self) -> bytes:
        return self._stdout.readline()

    def send_file(self, f: Any, offset: int, count: int) -> int:
        """Zero-copy fast path: `sendfile` from the cached blob into the command's stdin pipe."""
        try:
            return os.sendfile(self._stdin.fileno(), f.fileno(), offset, count)
        except (BrokenPipeError, ValueError) as exc:
            raise ChannelBroken(str(exc)) from exc

    def exit_status(self) -> int:
        return self.proc.wait()

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def transport_opener(transport: Any, timeout: float = 300.0) -> Opener:
    """Exec channels from a `provision.ssh.transport.Transport`; a lost connection is reopened once
    per call."""

    def open_exec(command: str) -> Channel:
        try:
            return transport.open_exec(command, timeout=timeout)
        except UnreachableError:
            raise  # no answer within the connect timeout: another connect now only doubles the wait
        except ConnectError:
            transport.reconnect()
            return transport.open_exec(command, timeout=timeout)

    return open_exec
