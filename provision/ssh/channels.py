"""Channels to a command running on a box: what `push` needs from a transport.

`Channel` is anything with `send`, `recv_line`, `exit_status`, `close` (and optionally `send_file`, a
zero-copy fast path): `LocalChannel` runs a local subprocess (tests, or the OpenSSH client as a bulk
transport), `ExecChannel` adapts an SSH exec channel (`provision.ssh.transport.Transport.open_exec`), and
`transport_opener` turns a Transport into an `Opener` (command -> Channel) that reopens a lost connection.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from typing import Any, Protocol

import paramiko

from provision.errors import ChannelBroken, ConnectError, FactError, UnreachableError
from provision.ssh.transport import send_all

# What the SSH library raises when a connection dies under a read or write: translated here, at the seam.
LINK_ERRORS = (OSError, EOFError, paramiko.SSHException)
MAX_LINE = 1 << 20  # one protocol line from a box (a receiver event, a chat token): far below this


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


class ExecChannel:
    """Adapts an SSH exec channel: a paramiko-style channel (sendall, makefile, recv_exit_status, close)
    or anything holding one as `.channel` (e.g. `provision.ssh.transport.Exec` from `Transport.open_exec`)."""

    def __init__(self, channel: Any, timeout: float | None = 300.0) -> None:
        # Keep the wrapper alive: a garbage-collected `Exec` closes its stdin file, which shuts down our
        # side of the channel (paramiko's ChannelStdinFile.close -> shutdown_write).
        self._owner = channel
        self.channel = getattr(channel, "channel", channel)
        # A link that goes silent must end in ChannelBroken, not hang forever; 300 s leaves room for a box
        # hashing a multi-GB prefix before it answers (paramiko cannot time out a blocked socket write).
        if timeout is not None:
            self.channel.settimeout(timeout)
        self._stdout = self.channel.makefile("rb")

    def send(self, data: bytes) -> None:
        try:
            send_all(self.channel, data)  # packet-sized pieces: paramiko's `sendall` alone re-copies
        except LINK_ERRORS as exc:  # paramiko's write_all raises EOFError when the connection is gone
            raise ChannelBroken(str(exc) or type(exc).__name__) from exc

    def recv_line(self) -> bytes:
        try:
            line = self._stdout.readline(MAX_LINE)
        except LINK_ERRORS as exc:
            raise ChannelBroken(str(exc) or type(exc).__name__) from exc
        if len(line) >= MAX_LINE and not line.endswith(b"\n"):
            raise FactError(f"the box sent a line longer than {MAX_LINE >> 10} KiB; refusing to read more")
        return line

    def exit_status(self) -> int:
        return self.channel.recv_exit_status()

    def close(self) -> None:
        self.channel.close()


def transport_opener(transport: Any, timeout: float = 300.0) -> Opener:
    """Exec channels from a `provision.ssh.transport.Transport`; a lost connection is reopened once
    per call."""

    def open_exec(command: str) -> Channel:
        try:
            return ExecChannel(transport.open_exec(command), timeout=timeout)
        except UnreachableError:
            raise  # no answer within the connect timeout: another connect now only doubles the wait
        except ConnectError:
            transport.reconnect()
            return ExecChannel(transport.open_exec(command), timeout=timeout)

    return open_exec
