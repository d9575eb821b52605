"""Fixtures shared by the runtime and emulator tests: stand-in models and the emulated `sophon.sail`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAIL_DIR = ROOT / "sim" / "sail"
if str(SAIL_DIR) not in sys.path:
    sys.path.insert(0, str(SAIL_DIR))  # `import sophon.sail` is the emulator, as on a simulated box

from chat.model import GlmModel  # noqa: E402
from chat.tokenizer import load_tokenizer  # noqa: E402
from sim.tinyglm import StandIn, build_standin  # noqa: E402


@pytest.fixture(scope="session")
def standin(tmp_path_factory) -> StandIn:
    """The default int4 stand-in (seed 0, SEQLEN 128)."""
    return build_standin(tmp_path_factory.mktemp("standin-int4"), seed=0, variant="int4")


@pytest.fixture(scope="session")
def standin_int8(tmp_path_factory) -> StandIn:
    return build_standin(tmp_path_factory.mktemp("standin-int8"), seed=0, variant="int8")


@pytest.fixture(scope="session")
def tokenizer(standin):
    return load_tokenizer(str(standin.token_dir))


@pytest.fixture
def model(standin) -> GlmModel:
    return GlmModel(str(standin.bmodel))


def subprocess_env() -> dict:
    """Environment for `python -m chat` in a subprocess: the repo and the emulator importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(SAIL_DIR)])
    env.pop("SOPHON_CHAT_BMODEL", None)
    env.pop("SOPHON_CHAT_TOKEN", None)
    return env
