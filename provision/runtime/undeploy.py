"""`undeploy`: remove one runtime version from a box, or all of them (and the `current` link).

A version is removed only if the box lists it (a name from the box, checked against a strict pattern:
nothing the operator types reaches `rm`); the live version is refused unless `everything` is asked, so a
box never points `current` at a deleted directory.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from provision.boxpaths import RUNTIME_DIR, RUNTIME_LINK
from provision.errors import ConfigError, NotReadyError
from provision.ssh.transport import Transport

_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


@dataclass(frozen=True)
class Undeployed:
    host: str
    removed: tuple[str, ...]
    current: str | None  # what `current` pointed at before
    left: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "removed": list(self.removed),
            "current_before": self.current,
            "left": list(self.left),
        }


def installed(transport: Transport) -> tuple[list[str], str | None]:
    """The runtime versions on the box and the one `current` points at."""
    script = (
        f'cd {RUNTIME_DIR} 2>/dev/null || exit 0; for d in */; do [ -d "$d" ] && [ ! -L "${{d%/}}" ] '
        f'&& echo "v ${{d%/}}"; done; [ -L {RUNTIME_LINK} ] && echo "c $(readlink {RUNTIME_LINK})"; true'
    )
    versions, current = [], None
    for line in transport.run(script).stdout.splitlines():
        kind, _, name = line.partition(" ")
        if kind == "v" and _VERSION.match(name):
            versions.append(name)
        elif kind == "c":
            current = name.rstrip("/").rsplit("/", 1)[-1] or None
    return versions, current


def undeploy_box(transport: Transport, version: str | None, *, everything: bool = False) -> Undeployed:
    """Remove `version` (or, with `everything`, every version and `current`). Raises NotReadyError when the
    version is the live one or not on the box."""
    name = transport.host.name
    versions, current = installed(transport)
    if everything:
        targets = versions
    else:
        if version is None:
            raise ConfigError("give a VERSION or --all", key="VERSION")
        if version not in versions:
            raise NotReadyError(
                f"{name}: runtime {version} is not on the box (it has: {', '.join(versions) or 'none'})"
            )
        if version == current:
            raise NotReadyError(
                f"{name}: {version} is the live runtime",
                hint="`sophon-fleet deploy --rollback` first, or `undeploy --all` to remove every version",
            )
        targets = [version]
    if targets or (everything and current):
        paths = " ".join(shlex.quote(f"{RUNTIME_DIR}/{v}") for v in targets)
        link = f"rm -f {RUNTIME_LINK} {RUNTIME_DIR}/history; " if everything else ""
        transport.run(f"{link}rm -rf -- {paths}; sync" if paths else f"{link}sync")
    left = tuple(v for v in versions if v not in targets)
    return Undeployed(name, tuple(targets), current, left)
