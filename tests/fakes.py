"""A scripted stand-in for `provision.ssh.transport.Transport`: no SSH, and any unscripted command is
an error."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from provision.errors import RemoteError
from provision.inventory.hosts import Host
from provision.ssh.transport import Result, command_failed, quote_command


@dataclass
class Script:
    """One expected command: a regex on the command line, and what it prints and returns."""

    pattern: str
    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0


@dataclass
class FakeTransport:
    host: Host
    scripts: list[Script]
    become_password: str | None = None
    calls: list[tuple[str, bool, bytes | str | None]] = field(default_factory=list)
    sudo_checks: int = 0

    def check_sudo(self) -> None:
        """The real Transport runs `sudo -k true` once; a scripted box's sudo takes its password."""
        self.sudo_checks += 1

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
        for script in self.scripts:
            if re.search(script.pattern, text, re.DOTALL):
                result = Result(text, script.exit_code, script.stdout, script.stderr, 0.0)
                if check and not result.ok:
                    raise command_failed(self.host, result, sudo=sudo)
                return result
        raise RemoteError(f"unscripted command on {self.host.name}: {text[:120]!r}")
