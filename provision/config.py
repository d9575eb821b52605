"""The config file: defaults for every command, `SOPHON_FLEET_HOME/config.yml`.

    inventory: ~/fleet/hosts.yml      # or a list; used when a command gets no -i / -H
    model: glm4-9b                    # the manifest commands take unless -m / SOPHON_FLEET_MODEL
    models: [~/fleet/models]          # searched for <model>.yaml after SOPHON_FLEET_MODELS
    forks: 16                         # boxes worked on at once (-f wins)
    cache: /srv/sophon-fleet-cache    # the asset cache (SOPHON_FLEET_CACHE wins)
    mirrors: [http://mirror.lan/]     # asset mirrors (SOPHON_FLEET_MIRRORS wins)

The environment overrides the file, a flag overrides both; `sophon-fleet config show` prints what is in
force and where each value came from. Errors name the file, line and key (exit 2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.yamlfile import Located, load_yaml, type_name

CONFIG_NAME = "config.yml"
KEYS = ("inventory", "model", "models", "forks", "cache", "mirrors")


@dataclass(frozen=True)
class ConfigFile:
    """The values the file sets (validated), and the line of each."""

    path: Path
    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def where(self, key: str) -> str:
        return f"{self.path}:{self.lines.get(key, 1)}"


def read_config(home: Path) -> ConfigFile:
    """`home/config.yml` (no file: no values). Raises ConfigError (file:line: key) for a bad one."""
    path = home / CONFIG_NAME
    if not path.is_file():
        return ConfigFile(path)
    doc = load_yaml(path)
    if doc.data is None:
        return ConfigFile(path)
    if not isinstance(doc.data, dict):
        raise doc.error((), f"must be a mapping of settings, not {type_name(doc.data)}")
    values: dict[str, Any] = {}
    for key, value in doc.data.items():
        if key not in KEYS:
            raise doc.error((key,), f"unknown setting (known: {', '.join(KEYS)})")
        if value is not None:
            values[key] = _check(doc, key, value, path.parent)
    return ConfigFile(path, values, {k: doc.line_of((k,)) or 1 for k in values})


def _check(doc: Located, key: str, value: Any, base: Path) -> Any:
    if key == "forks":
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise doc.error((key,), f"must be a whole number >= 1, not {value!r}")
        return value
    if key == "model":
        if not isinstance(value, str) or not value.strip():
            raise doc.error((key,), f"must be a manifest name, not {type_name(value)}")
        return value
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
        raise doc.error((key,), f"must be text or a list of text, not {type_name(value)}")
    if key == "mirrors":
        return tuple(items)
    paths = tuple(base / os.path.expanduser(v) for v in items)
    return paths[0] if key == "cache" else paths
