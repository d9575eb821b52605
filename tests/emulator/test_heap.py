"""The npu heap bounds what the emulator loads, as the ion heap does on a box: a stand-in whose weights do not
fit fails to load with libbmlib/libbmrt's words, one that fits but whose KV cache does not fails when the
runtime allocates it, and enough heap runs it; GLM-4-9B's real size loads with the heap footprint.py derives
and not with less. (tests/vendor/test_heaps.py shows the same on the cmodel.)"""

from __future__ import annotations

import gc
import re

import pytest

from chat.errors import ModelError
from chat.model import GlmModel
from provision.compile import footprint
from provision.manifest import load_manifest
from sim import tinyglm

MIB = 1 << 20

LOAD_FAILED = (
    r"bm_alloc_gmem failed, dev_id = 0, size = 0x(?P<size>[0-9a-f]+) \| "
    r"\[BMRT\]\[Register\] FATAL:coeff alloc failed, size\[0x(?P=size)\] \| "
    r"\[BMRT\]\[load_bmodel\] FATAL:Load bmodel\[.*\] failed"
)


def test_weights_that_do_not_fit_the_heap_do_not_load(standin, monkeypatch):
    monkeypatch.setenv("SOPHON_SAIL_NPU_HEAP_BYTES", str(64 << 10))
    with pytest.raises(ModelError, match=LOAD_FAILED):
        GlmModel(str(standin.bmodel))


def test_a_kv_cache_that_does_not_fit_fails_when_allocated(standin, monkeypatch):
    monkeypatch.setenv("SOPHON_SAIL_NPU_HEAP_BYTES", str(64 << 10))
    with pytest.raises(ModelError) as error:
        GlmModel(str(standin.bmodel))
    need = int(re.search(LOAD_FAILED, str(error.value)).group("size"), 16)
    monkeypatch.setenv("SOPHON_SAIL_NPU_HEAP_BYTES", str(need))  # the weights fit, nothing else does
    with pytest.raises(
        RuntimeError, match=r"Tensor: \[bmlib_memory\]\[error\] bm_alloc_gmem failed, dev_id = 0"
    ):
        GlmModel(str(standin.bmodel))
    monkeypatch.setenv("SOPHON_SAIL_NPU_HEAP_BYTES", str(need + (1 << 20)))  # + 1 MiB: KV cache and buffers
    model = GlmModel(str(standin.bmodel))
    model.prefill([1, 2, 3])
    model.decode(model.greedy())
    assert model.filled == 4


# GLM-4-9B as sophon-demo ships it (glm-4-9b-chat's config.json, SEQLEN 512 as in models/glm4-9b.yaml)
GLM4_9B = dict(
    footprint.GLM4_9B, seqlen=512, padded_vocab=151552, vocab=151343, rope_ratio=500.0, eps=1.5625e-07
)
TENSOR_FAILED = r"Tensor: \[bmlib_memory\]\[error\] bm_alloc_gmem failed, dev_id = 0"


def held() -> int:
    """Device bytes this process's emulated engines and tensors still hold (earlier tests' objects that only
    the garbage collector frees, e.g. the tensors of a model whose construction raised)."""
    import sophon.sail as sail  # the emulator (tests/chat/conftest.py puts sim/sail first)

    gc.collect()
    return sail._USED.get(0, 0)


def glm4_9b_standin(tmp_path, variant):
    """A bmodel declaring GLM-4-9B's graphs and what libbmrt needs to load it (no weights)."""
    need = footprint.device_bytes(GLM4_9B, 512, variant)
    return tinyglm.build_declared_standin(tmp_path, GLM4_9B, variant=variant, device_bytes=need)


@pytest.mark.parametrize("variant", ["int4", "int8"])
def test_glm4_9b_loads_with_the_heap_it_needs_and_not_with_one_byte_less(variant, tmp_path, monkeypatch):
    """What footprint.py derives: the bmodel (coefficients + neurons + instructions, as libbmrt counts them)
    plus every tensor chat/model.py allocates (KV cache of 40 layers, buffers, logits), to the byte."""
    bmodel = glm4_9b_standin(tmp_path, variant)
    need = footprint.device_bytes(GLM4_9B, 512, variant) + footprint.runtime_tensor_bytes(GLM4_9B, 512)
    monkeypatch.setenv("SOPHON_SAIL_NPU_HEAP_BYTES", str(held() + need))
    model = GlmModel(str(bmodel))
    assert (model.num_layers, model.seqlen, model.hidden, model.vocab) == (40, 512, 4096, 151552)
    del model
    monkeypatch.setenv("SOPHON_SAIL_NPU_HEAP_BYTES", str(held() + need - 1))  # the bmodel loads, a tensor not
    with pytest.raises(RuntimeError, match=TENSOR_FAILED):
        GlmModel(str(bmodel))
    assert footprint.min_heap_mib(GLM4_9B, 512, variant) == -(-need // MIB)


# sophon-demo's sample/ChatGLM4/README.md: "int8模型应满足tpu内存 >= 7168MB，int4模型应满足tpu内存 >= 4608MB"
README_MIB = {"int4": 4608, "int8": 7168}


@pytest.mark.parametrize(("variant", "need_mib"), [("int4", 5860), ("int8", 10045)])
def test_glm4_9b_loads_at_the_manifest_threshold_and_not_at_the_readme_one(
    variant, need_mib, tmp_path, monkeypatch
):
    """models/glm4-9b.yaml's min_heap_mib (what preflight compares npu + vpp with) is what footprint.py
    derives, and GLM-4-9B loads with that heap; at the sample README's threshold it does not: its
    coefficients alone are 5766 MiB (int4) and 9952 MiB (int8); the README's figures are ChatGLM3-6B's."""
    threshold = load_manifest("glm4-9b").variant(variant).min_heap_mib
    assert threshold == footprint.min_heap_mib(GLM4_9B, 512, variant) == need_mib
    bmodel = glm4_9b_standin(tmp_path, variant)
    monkeypatch.setenv("SOPHON_SAIL_NPU_HEAP_BYTES", str(held() + threshold * MIB))
    model = GlmModel(str(bmodel))
    assert model.num_layers == 40
    del model
    monkeypatch.setenv("SOPHON_SAIL_NPU_HEAP_BYTES", str(held() + README_MIB[variant] * MIB))
    with pytest.raises(ModelError, match=LOAD_FAILED) as error:
        GlmModel(str(bmodel))
    refused = int(re.search(LOAD_FAILED, str(error.value)).group("size"), 16)
    assert refused == footprint.device_bytes(GLM4_9B, 512, variant) > README_MIB[variant] * MIB
