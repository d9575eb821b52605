"""Every test runs as on a fresh machine: the tool's home, cache, models path, the simulator's state and
site cache, and the caches of the libraries the tool drives (pip, matplotlib, XDG) are temp dirs.

Nothing a test does may read or write `~/.cache`, `~/.config`, `~/.ssh`, `/var/cache` or the source tree.
The simulator's site cache and pip's cache are shared by the tests of one session (a box's numpy is
installed once per run, not once per test); everything else is per test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

hypothesis_settings.register_profile("no-database", database=None)  # no .hypothesis/ in the source tree
hypothesis_settings.load_profile("no-database")


@pytest.fixture(scope="session")
def session_caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Caches shared by one test session; `SOPHON_FLEET_SIM_CACHE` from the environment wins (CI points it
    at a new temp dir, so the first `sim up` of a run installs the box site itself)."""
    base = tmp_path_factory.mktemp("session-caches")
    sim_cache = os.environ.get("SOPHON_FLEET_SIM_CACHE") or str(base / "sim-cache")
    return {"sim": Path(sim_cache), "pip": base / "pip"}


@pytest.fixture(autouse=True)
def isolated_settings(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, session_caches: dict[str, Path]
) -> Path:
    """Point every SOPHON_FLEET_* location (and the libraries' caches) at temp dirs."""
    home = tmp_path_factory.mktemp("fleet-home")
    env = {
        "SOPHON_FLEET_HOME": home / "home",
        "SOPHON_FLEET_CACHE": home / "cache",
        "SOPHON_FLEET_SIM_DIR": home / "sim",
        "SOPHON_FLEET_SIM_CACHE": session_caches["sim"],
        "SOPHON_FLEET_SSH_CONFIG": home / "ssh_config",
        "SOPHON_FLEET_USER_KNOWN_HOSTS": home / "user_known_hosts",
        "XDG_CACHE_HOME": home / "xdg-cache",
        "XDG_CONFIG_HOME": home / "xdg-config",
        "MPLCONFIGDIR": home / "matplotlib",
        "PIP_CACHE_DIR": session_caches["pip"],
    }
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    for name in (
        "SOPHON_FLEET_MODELS",
        "SOPHON_FLEET_MODEL",
        "SOPHON_FLEET_MIRRORS",
        "SOPHON_FLEET_SIM_PYTHON",
        "SSH_AUTH_SOCK",
    ):
        monkeypatch.delenv(name, raising=False)
    return home
