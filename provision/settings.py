"""Every SOPHON_FLEET_* environment variable is read here and nowhere else."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.config import KEYS, ConfigFile, read_config

DEFAULT_MODEL = "glm4-9b"  # the model commands and playbooks take unless told (SOPHON_FLEET_MODEL)


def _xdg(env: Mapping[str, str], var: str, default: str) -> Path:
    return Path(env.get(var) or Path.home() / default)


@dataclass(frozen=True)
class Settings:
    """Where the tool keeps its files; tests point these at tmp_path."""

    home: Path
    cache_dir: Path
    sim_dir: Path
    sim_cache: Path  # the simulator's per-machine installs (the boxes' Python site), SOPHON_FLEET_SIM_CACHE
    ssh_config: Path  # ~/.ssh/config, for Host aliases (SOPHON_FLEET_SSH_CONFIG; tests point it elsewhere)
    user_known_hosts: Path  # ~/.ssh/known_hosts, trusted besides our own (SOPHON_FLEET_USER_KNOWN_HOSTS)
    model: str | None = None  # SOPHON_FLEET_MODEL; else the inventory's `model:`, else DEFAULT_MODEL
    sim_python: str | None = None  # the boxes' python3 (SOPHON_FLEET_SIM_PYTHON); default: CPython 3.8
    mirrors: tuple[str, ...] = ()  # asset mirrors tried before the manifest's (SOPHON_FLEET_MIRRORS)
    models_path: tuple[
        Path, ...
    ] = ()  # directories searched for models/<name>.yaml first (SOPHON_FLEET_MODELS)
    # from the config file (provision/config.py) unless a flag says otherwise
    inventories: tuple[Path, ...] = ()  # used when a command gets no -i / -H
    forks: int | None = None
    origins: Mapping[str, str] = field(default_factory=dict)  # value -> where it came from (`config show`)

    @property
    def known_hosts(self) -> Path:
        return self.home / "known_hosts"


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Resolve settings from the environment (SOPHON_FLEET_HOME, _CACHE, _SIM_DIR, _SIM_CACHE, _SIM_PYTHON,
    _SSH_CONFIG, _MODEL,
    _USER_KNOWN_HOSTS, _MIRRORS, _MODELS)."""
    env = os.environ if env is None else env
    home = Path(env.get("SOPHON_FLEET_HOME") or _xdg(env, "XDG_CONFIG_HOME", ".config") / "sophon-fleet")
    cache = Path(env.get("SOPHON_FLEET_CACHE") or _xdg(env, "XDG_CACHE_HOME", ".cache") / "sophon-fleet")
    sim_dir = Path(env.get("SOPHON_FLEET_SIM_DIR") or "/run/sophon-fleet-sim")
    sim_cache = Path(env.get("SOPHON_FLEET_SIM_CACHE") or "/var/cache/sophon-fleet-sim")
    ssh_dir = Path.home() / ".ssh"
    config = read_config(home)
    values, origins = _layered(env, config)
    if "cache" in values:
        cache = values["cache"]
    return Settings(
        inventories=values.get("inventory", ()),
        forks=values.get("forks"),
        origins=origins,
        home=home,
        cache_dir=cache,
        sim_dir=sim_dir,
        sim_cache=sim_cache,
        sim_python=env.get("SOPHON_FLEET_SIM_PYTHON") or None,
        model=values.get("model"),
        ssh_config=Path(env.get("SOPHON_FLEET_SSH_CONFIG") or ssh_dir / "config"),
        user_known_hosts=Path(env.get("SOPHON_FLEET_USER_KNOWN_HOSTS") or ssh_dir / "known_hosts"),
        mirrors=values.get("mirrors", ()),
        models_path=values.get("models", ()),
    )


# config key -> the environment variable that overrides it, and how to read that variable
_ENV = {
    "model": ("SOPHON_FLEET_MODEL", lambda v: v),
    "cache": ("SOPHON_FLEET_CACHE", Path),
    "mirrors": ("SOPHON_FLEET_MIRRORS", lambda v: tuple(v.replace(",", " ").split())),
    "models": ("SOPHON_FLEET_MODELS", lambda v: tuple(Path(p) for p in v.split(":") if p)),
}


def _layered(env: Mapping[str, str], config: ConfigFile) -> tuple[dict[str, Any], dict[str, str]]:
    """Each configurable value from the environment, else the config file; and where it came from.
    `models` adds up: SOPHON_FLEET_MODELS first, then the file's."""
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for key in KEYS:
        var, read = _ENV.get(key, ("", str))
        if var and env.get(var):
            values[key], origins[key] = read(env[var]), f"env {var}"
            if key == "models" and "models" in config.values:
                values[key] = (*values[key], *config.values["models"])
                origins[key] += f" + {config.where(key)}"
        elif key in config.values:
            values[key], origins[key] = config.values[key], config.where(key)
    return values, origins
