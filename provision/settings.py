"""Every SOPHON_FLEET_* environment variable is read here and nowhere else."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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
    return Settings(
        home=home,
        cache_dir=cache,
        sim_dir=sim_dir,
        sim_cache=sim_cache,
        sim_python=env.get("SOPHON_FLEET_SIM_PYTHON") or None,
        model=env.get("SOPHON_FLEET_MODEL") or None,
        ssh_config=Path(env.get("SOPHON_FLEET_SSH_CONFIG") or ssh_dir / "config"),
        user_known_hosts=Path(env.get("SOPHON_FLEET_USER_KNOWN_HOSTS") or ssh_dir / "known_hosts"),
        mirrors=tuple((env.get("SOPHON_FLEET_MIRRORS") or "").replace(",", " ").split()),
        models_path=tuple(Path(p) for p in (env.get("SOPHON_FLEET_MODELS") or "").split(":") if p),
    )
