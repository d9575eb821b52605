"""The one scripted stand-in for `provision.ssh.transport.Transport` in unit tests: no SSH, and any command
it was not told about fails the test.

A script is a list of `Reply`s, each a regex searched in the command line (use `exactly(...)` for a whole
command, `re.escape` for a substring) and what the command prints and returns — or the exception it
raises. `ordered=True` consumes the replies in order (the next command must match the next reply);
otherwise the first reply that matches answers, as often as asked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from provision.inventory.hosts import Host
from provision.ssh.transport import Result, command_failed, quote_command


class UnscriptedCommand(AssertionError):
    """The code under test ran a command the test did not expect."""


@dataclass
class Reply:
    pattern: str
    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0
    raises: BaseException | None = None


def exactly(command: str) -> str:
    """A pattern that matches `command` and nothing else."""
    return f"^{re.escape(command)}$"


@dataclass
class ScriptedTransport:
    """Speaks the Transport seam (`host`, `become_password`, `run`, `reconnect`, `close`)."""

    replies: list[Reply]
    host: Host = field(default_factory=lambda: Host("se7-1", "10.0.0.1"))
    ordered: bool = False
    reconnects: list[BaseException | None] = field(default_factory=list)  # each reconnect() takes one
    become_password: str | None = None
    calls: list[tuple[str, bool, bytes | str | None]] = field(default_factory=list)
    closed: int = 0
    sudo_checks: int = 0

    def check_sudo(self) -> None:
        """The real Transport runs `sudo -k true` once; a scripted box's sudo takes its password."""
        self.sudo_checks += 1

    @property
    def commands(self) -> list[str]:
        return [text for text, _sudo, _stdin in self.calls]

    def run(
        self,
        command: str | Sequence[str],
        *,
        sudo: bool = False,
        timeout: float | None = None,
        stdin: bytes | str | None = None,
        check: bool = True,
    ) -> Result:
        text = command if isinstance(command, str) else quote_command(command)
        self.calls.append((text, sudo, stdin))
        reply = self._reply_for(text)
        if reply.raises is not None:
            raise reply.raises
        result = Result(text, reply.exit_code, reply.stdout, reply.stderr, 0.0)
        if check and not result.ok:
            raise command_failed(self.host, result, sudo=sudo)
        return result

    def _reply_for(self, text: str) -> Reply:
        if self.ordered:
            if not self.replies:
                raise UnscriptedCommand(f"unscripted command on {self.host.name} (script done): {text!r}")
            reply = self.replies.pop(0)
            if not re.search(reply.pattern, text, re.DOTALL):
                raise UnscriptedCommand(f"expected /{reply.pattern}/ on {self.host.name}, got {text!r}")
            return reply
        for reply in self.replies:
            if re.search(reply.pattern, text, re.DOTALL):
                return reply
        raise UnscriptedCommand(f"unscripted command on {self.host.name}: {text[:160]!r}")

    def reconnect(self) -> None:
        if self.reconnects:
            error = self.reconnects.pop(0)
            if error is not None:
                raise error

    def close(self) -> None:
        self.closed += 1
