"""OpenSSH client config (`~/.ssh/config`): the Host aliases an inventory entry may name.

Only what a box connection needs: HostName, User, Port, IdentityFile, ProxyJump. First value wins (as in
ssh). `Include` is followed (globs; relative paths from ~/.ssh, as ssh does for the user's config; nested up
to 16 deep) and its lines count where the Include stands. `Match all` and `Match host|originalhost LIST`
are evaluated; a Match with any other criterion (exec, user, canonical, ...) never applies, so nothing is
taken from a block we cannot judge.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.errors import ConfigError


@dataclass(frozen=True)
class SshConfig:
    """`Host` (and judged `Match`) blocks of an OpenSSH client config (first value wins, as in ssh)."""

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


MAX_INCLUDE_DEPTH = 16


def load_ssh_config(path: Path) -> SshConfig:
    """Parse an ssh client config and what it includes (relative names from its directory, at any depth,
    as ssh resolves them from ~/.ssh); a missing file is an empty config."""
    return _parse_lines(_read_lines(path, path.parent, 0))


def parse_ssh_config(text: str, base: Path | None = None) -> SshConfig:
    """Parse config text; relative `Include`s resolve from `base` (default ~/.ssh)."""
    return _parse_lines(_expand(text.splitlines(), base or Path("~/.ssh").expanduser(), 0, "<text>"))


def _read_lines(path: Path, base: Path, depth: int) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"cannot read ssh config: {exc.strerror}", file=str(path)) from exc
    return _expand(text.splitlines(), base, depth, str(path))


def _expand(lines: list[str], base: Path, depth: int, where: str) -> list[str]:
    """The lines with every `Include` replaced by the lines of the files it names (sorted glob matches)."""
    out: list[str] = []
    for number, raw in enumerate(lines, 1):
        match = re.match(r"^\s*include\s*(?:=|\s)\s*(.*)$", raw, re.IGNORECASE)
        if not match:
            out.append(raw)
            continue
        if depth >= MAX_INCLUDE_DEPTH:
            raise ConfigError("ssh config Include nested too deep", file=where, line=number, key="Include")
        for pattern in match.group(1).split():
            pattern = os.path.expanduser(pattern.strip('"'))
            full = pattern if os.path.isabs(pattern) else str(base / pattern)
            for name in sorted(glob.glob(full)):
                out.extend(_read_lines(Path(name), base, depth + 1))
    return out


def _match_patterns(value: str) -> tuple[str, ...]:
    """Host patterns a `Match` line stands for: `all` is `*`, `host`/`originalhost` lists count, anything
    else (exec, user, canonical, final, ...) gives no pattern: that block never applies."""
    words = value.split()
    if [w.lower() for w in words] == ["all"]:
        return ("*",)
    patterns: list[str] = []
    for criterion, argument in zip(words[::2], words[1::2], strict=False):
        if criterion.lower() not in ("host", "originalhost") or len(words) % 2:
            return ()
        patterns += argument.split(",")
    return tuple(patterns)


def _parse_lines(lines: list[str]) -> SshConfig:
    blocks: list[tuple[tuple[str, ...], list[tuple[str, str]]]] = [(("*",), [])]
    for raw in lines:
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
            blocks.append((_match_patterns(value), []))
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
