"""Broken or foreign bmodels are refused with a clear error, by both engines and by `chat info`: a compiled
bmodel truncated by one byte, one compiled for another chip (BM1688), and — for the emulator — a compiled
bmodel at all (it runs stand-ins) and a stand-in truncated by one byte or made for another chip."""

from __future__ import annotations

import subprocess
import sys

import pytest

from chat.bmodel_info import read_bmodel_info
from chat.errors import ModelError
from chat.model import GlmModel
from provision.compile.checkpoint import load_checkpoint
from provision.compile.pipeline import export_graphs
from sim.tinyglm import build_standin, write_hf_checkpoint

pytestmark = pytest.mark.vendor
LOAD = (
    "from chat.model import GlmModel\ntry:\n    GlmModel(%r)\nexcept Exception as error:\n    print(error)\n"
)


def truncated_copy(source, target):
    target.write_bytes(source.read_bytes()[:-1])
    return target


@pytest.fixture(scope="module")
def bm1688_bmodel(toolchain, tmp_path_factory):
    """The tiny GLM-4's embedding_cache graph compiled for BM1688 (another chip) with the same tpu-mlir."""
    work = tmp_path_factory.mktemp("bm1688")
    ckpt = load_checkpoint(write_hf_checkpoint(work / "glm"))
    export_graphs(toolchain, ckpt, work / "onnx", 16, ["embedding_cache"], work, lambda event: None)
    transform = ["--model_name", "e", "--model_def", str(work / "onnx" / "embedding_cache.onnx")]
    transform += ["--input_shapes", "[[1,1]]", "--input_types", "int32", "--mlir", "e.mlir"]
    deploy = ["--mlir", "e.mlir", "--quantize", "F16", "--chip", "bm1688", "--model", "e.bmodel"]
    for tool, args in (("model_transform", transform), ("model_deploy", deploy)):
        done = subprocess.run([str(toolchain.tool(tool)), *args], cwd=work, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:]
    return work / "e.bmodel"


def test_the_cmodel_refuses_a_bmodel_truncated_by_one_byte(compiled, run_python38, tmp_path):
    broken = truncated_copy(compiled / "glm4-9b_int4_1dev.bmodel", tmp_path / "broken.bmodel")
    code, out, err = run_python38(LOAD % str(broken))
    assert code == 0, err
    assert "cannot load bmodel on device 0" in out and f"FATAL: File[{broken}] is broken" in out


def test_the_cmodel_refuses_a_bmodel_of_another_chip(bm1688_bmodel, run_python38):
    code, out, err = run_python38(LOAD % str(bm1688_bmodel))
    assert code == 0, err
    assert "runtime arch[BM1684X] is not the same with bmodel arch[BM1688]" in out


def test_chat_info_names_truncation_and_the_chip(compiled, bm1688_bmodel, tmp_path):
    broken = truncated_copy(compiled / "glm4-9b_int4_1dev.bmodel", tmp_path / "broken.bmodel")
    done = subprocess.run(
        [sys.executable, "-m", "chat", "info", "--bmodel", str(broken)], capture_output=True, text=True
    )
    assert done.returncode == 1 and "truncated" in done.stderr and str(broken.stat().st_size) in done.stderr
    assert read_bmodel_info(str(bm1688_bmodel)).chip == "BM1688"


def test_the_emulator_refuses_compiled_truncated_and_foreign_models(compiled, tmp_path):
    with pytest.raises(ModelError, match="compiled by tpu-mlir.*--engine cmodel"):
        GlmModel(str(compiled / "glm4-9b_int4_1dev.bmodel"))
    standin = build_standin(tmp_path / "ok", seed=0, variant="int4")
    with pytest.raises(ModelError, match="truncated"):
        GlmModel(str(truncated_copy(standin.bmodel, tmp_path / "broken.bmodel")))
    other = build_standin(tmp_path / "bm1688", seed=0, variant="int4", chip="BM1688")
    with pytest.raises(
        ModelError, match=r"runtime arch\[BM1684X\] is not the same with bmodel arch\[BM1688\]"
    ):
        GlmModel(str(other.bmodel))
