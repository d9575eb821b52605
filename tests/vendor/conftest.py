"""Fixtures of the vendor-runtime tests (`make test-vendor`, marker `vendor`): the compiler venv, the runtime
libraries and the compiled tiny GLM-4, each made once per session (or reused from the caches named by
SOPHON_FLEET_CACHE / SOPHON_FLEET_SIM_CACHE in the environment, which CI points at new temp dirs), and a
runner for the chat runtime on the cmodel under the boxes' Python 3.8.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sim import box as boxmod
from sim import vendor
from sim.fleet import ensure_site
from tests.sim.conftest import sim_fleet  # noqa: F401 (the simulated-fleet fixture, for test_sim_cmodel)

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "sim" / "sail") not in sys.path:
    sys.path.insert(0, str(ROOT / "sim" / "sail"))  # in this process `sophon.sail` is the numpy emulator
DRIVER = Path(__file__).with_name("cmodel_driver.py")
ENV_TOOL_CACHE = os.environ.get("SOPHON_FLEET_CACHE")  # read before the autouse fixture replaces it


@pytest.fixture(scope="session")
def tool_cache(tmp_path_factory) -> Path:
    """Where the compiler's venv lives for this session (the tool's cache dir)."""
    return Path(ENV_TOOL_CACHE) if ENV_TOOL_CACHE else tmp_path_factory.mktemp("tool-cache")


@pytest.fixture(scope="session")
def toolchain(tool_cache):
    from provision.compile.toolchain import ensure_toolchain

    return ensure_toolchain(tool_cache)


@pytest.fixture(scope="session")
def runtime_dir(session_caches) -> Path:
    return vendor.ensure_runtime(session_caches["sim"])


@pytest.fixture(scope="session")
def compiled(session_caches, tool_cache, toolchain) -> Path:
    """glm4-9b_{int4,int8}_1dev.bmodel + token_config.zip: sim/tinyglm.py's GLM-4 (seed 0) compiled."""
    return vendor.ensure_compiled_standins(session_caches["sim"], tool_cache)


@pytest.fixture(scope="session")
def box_python(session_caches):
    """The boxes' interpreter (CPython 3.8 where the machine has it) and its numpy site."""
    python = boxmod.box_python(None)
    return python, ensure_site(session_caches["sim"], python)


def cmodel_env(runtime_dir: Path, site: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "sim" / "sail_cmodel"), str(site)])
    env["SOPHON_SAIL_LIB_DIR"] = str(runtime_dir)
    return env


@pytest.fixture(scope="session")
def run_cmodel(runtime_dir, box_python, tmp_path_factory):
    """`run_cmodel(bmodel, runs)`: the driver's JSON result (see cmodel_driver.py)."""
    python, site = box_python

    def run(bmodel: Path, runs: list[dict], timeout: float = 600) -> dict:
        request = tmp_path_factory.mktemp("cmodel") / "request.json"
        request.write_text(json.dumps({"bmodel": str(bmodel), "runs": runs}))
        done = subprocess.run(
            [python.path, str(DRIVER), str(request)],
            env=cmodel_env(runtime_dir, site),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)

    return run


@pytest.fixture(scope="session")
def run_python38(runtime_dir, box_python):
    """`run_python38(code)`: (exit code, stdout, stderr) of a snippet with the cmodel sail importable."""
    python, site = box_python

    def run(code: str, timeout: float = 300, args: list[str] = (), env: dict | None = None):
        done = subprocess.run(
            [python.path, "-c", code, *args],
            env={**cmodel_env(runtime_dir, site), **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return done.returncode, done.stdout, done.stderr

    return run
