"""`sophon-fleet model compile` end to end on the tiny GLM-4 (a Hugging Face-format checkpoint written by
sim/tinyglm.py): the real tpu-mlir pipeline, one line per graph, a build killed midway that resumes with the
graphs it had finished, and the result registered like a downloaded model (cache, manifest, lock)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from provision.assets.cache import Cache, sha256_file
from provision.assets.pins import load_pins
from provision.compile.onnx_graph_names import graph_names
from provision.manifest import load_manifest
from sim.tinyglm import write_hf_checkpoint
from tests.sim.flows import invoke

pytestmark = pytest.mark.vendor
SOPHON_FLEET = str(Path(sys.executable).with_name("sophon-fleet"))


@pytest.fixture
def shared_cache(tool_cache, toolchain, monkeypatch):
    """The session's tool cache (with the compiler venv in it) as this test's SOPHON_FLEET_CACHE."""
    monkeypatch.setenv("SOPHON_FLEET_CACHE", str(tool_cache))
    return tool_cache


def compile_args(checkpoint, out, build, name="tiny-ft"):
    return ["model", "compile", str(checkpoint), "--name", name, "--variant", "int4", "--seqlen", "64",
            "--out", str(out), "--build-dir", str(build)]  # fmt: skip


def test_a_killed_compile_resumes_and_registers_the_model(shared_cache, tmp_path):
    checkpoint = write_hf_checkpoint(tmp_path / "glm", seed=4)
    out, build = tmp_path / "out", tmp_path / "build"
    finished = []
    with subprocess.Popen(
        [SOPHON_FLEET, *compile_args(checkpoint, out, build)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            for line in process.stderr:
                if line.startswith("compiled"):
                    finished.append(line.split()[-3])
                    if len(finished) == 3:
                        break
        finally:
            os.killpg(process.pid, signal.SIGKILL)  # the compiler and its tpu-mlir children, mid-build
    assert len(finished) == 3, "the build did not get three graphs in"
    assert not (out / "tiny-ft_int4_1dev.bmodel").exists()

    code, stdout, stderr = invoke(*compile_args(checkpoint, out, build))  # people's output: a line per graph
    assert code == 0, stdout + stderr
    lines = [line.split() for line in stderr.splitlines() if line.split()[:1] in (["cached"], ["compiled"])]
    assert [words[-1] if words[0] == "cached" else words[-3] for words in lines][:9] == graph_names(2)
    assert [words[-1] for words in lines[:9] if words[0] == "cached"] == finished  # kept, not recompiled
    assert len([words for words in lines if words[0] == "compiled"]) == 9 - 3
    result = json.loads(invoke(*compile_args(checkpoint, out, build), "--json")[1])
    assert result["compiled"] == 0 and result["graphs"] == 9 and result["seqlen"] == 64

    bmodel = out / "tiny-ft_int4_1dev.bmodel"
    manifest = load_manifest(result["manifest"])
    assert manifest.model == "tiny-ft" and manifest.seqlen == 64 and manifest.chip == "bm1684x"
    variant = manifest.variant("int4")
    assert [f.id for f in variant.files] == ["bmodel-int4", "token-config", "sail-wheel"]
    lock = load_pins(manifest)
    assert lock.entries["bmodel-int4"].sha256 == sha256_file(bmodel)
    cached = Cache(shared_cache).lookup("tiny-ft", bmodel.name, sha256_file(bmodel))
    assert cached is not None and cached.sha256 == sha256_file(bmodel)
    assert (out / "token_config" / "tokenizer.model").read_bytes() == (
        checkpoint / "tokenizer.model"
    ).read_bytes()

    assert sha256_file(bmodel) == lock.entries["bmodel-int4"].sha256  # the last run did not even recombine
