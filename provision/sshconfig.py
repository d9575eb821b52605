"""OpenSSH client config (`~/.ssh/config`): the Host aliases an inventory entry may name.

Only what a box connection needs: HostName, User, Port, IdentityFile, ProxyJump. First value wins (as in
ssh); `Match` blocks and `Include` are not evaluated.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.errors import ConfigError


@dataclass(frozen=True)
class SshConfig:
    """`Host` blocks of an OpenSSH client config (first value wins, as in ssh); `Match` blocks are skipped."""

    blocks: tuple[tuple[tuple[str, ...], tuple[tuple[str, str], ...]], ...]

    def lookup(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for patterns, options in self.blocks:
            if not _ssh_pattern_matches(patterns, name):
                continue
            for key, value in options:
                if key == "identityfile":
                    found.setdefault(key, []).append(value)
                elif key == "port":
                    found.setdefault(key, int(value) if value.isdigit() else value)
                else:
                    found.setdefault(key, value)
        if "hostname" in found:
            found["hostname"] = found["hostname"].replace("%h", name)
        if found.get("proxyjump", "").lower() == "none":
            del found["proxyjump"]
        return found


SSH_CONFIG_KEYS = {"hostname", "user", "port", "identityfile", "proxyjump"}


def load_ssh_config(path: Path) -> SshConfig:
    """Parse an ssh client config; a missing file is an empty config."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return SshConfig(())
    except OSError as exc:
        raise ConfigError(f"cannot read ssh config: {exc.strerror}", file=str(path)) from exc
    return parse_ssh_config(text)


def parse_ssh_config(text: str) -> SshConfig:
    blocks: list[tuple[tuple[str, ...], list[tuple[str, str]]]] = [(("*",), [])]
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([A-Za-z]+)\s*(?:=|\s)\s*(.*)$", line)
        if not match:
            continue
        key, value = match.groups()
        key = key.lower()
        value = value.strip().strip('"')
        if key == "host":
            blocks.append((tuple(value.split()), []))
        elif key == "match":
            blocks.append(((), []))  # never matches: we do not evaluate Match
        elif key in SSH_CONFIG_KEYS:
            blocks[-1][1].append((key, os.path.expanduser(value) if key == "identityfile" else value))
    return SshConfig(tuple((p, tuple(o)) for p, o in blocks))


def _ssh_pattern_matches(patterns: tuple[str, ...], name: str) -> bool:
    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if fnmatch.fnmatchcase(name, pattern.lstrip("!")):
            if negated:
                return False
            matched = True
    return matched
