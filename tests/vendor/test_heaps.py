"""The npu heap bounds what loads on the cmodel engine too, with the same words as the emulator (and a box):
weights that do not fit refuse to load, a KV cache that does not fit fails when allocated, and the heap
`model compile` writes into the manifest (min_heap_mib) is enough to load and run the compiled model; the
runtime counts coefficients as provision/compile/footprint.py does, and a bmodel declaring GLM-4-9B's sizes
fits models/glm4-9b.yaml's thresholds and is refused at the sample README's."""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import pytest

from chat import bmodel_info
from provision.compile import footprint
from provision.compile.register import HEAP_MARGIN_MIB, kv_cache_mib
from provision.manifest import load_manifest
from tests.emulator.test_heap import LOAD_FAILED

pytestmark = pytest.mark.vendor
PROGRAM = """
import sys
from chat.model import GlmModel
try:
    model = GlmModel(sys.argv[1])
    model.prefill([1, 2, 3])
    model.decode(model.greedy())
    print("ran", model.filled)
except Exception as error:
    print(error)
"""


def load_with_heap(run_python38, bmodel, heap_bytes):
    code, out, err = run_python38(
        PROGRAM, args=[str(bmodel)], env={"SOPHON_SAIL_NPU_HEAP_BYTES": str(heap_bytes)}
    )
    assert code == 0, err
    return out.strip()


def test_the_heap_bounds_what_loads_on_the_cmodel(compiled, run_python38):
    bmodel = compiled / "glm4-9b_int4_1dev.bmodel"
    refused = load_with_heap(run_python38, bmodel, 64 << 10)
    match = re.search(LOAD_FAILED, refused)
    assert match, refused
    need = int(match.group("size"), 16)  # what bmrt_get_bmodel_info says the model needs on the device
    kv_short = load_with_heap(run_python38, bmodel, need)
    assert "Tensor: [bmlib_memory][error] bm_alloc_gmem failed, dev_id = 0" in kv_short
    config = {"layers": 2, "kv_heads": 2, "head_dim": 16}
    size_mib = -(-bmodel.stat().st_size // 2**20)
    min_heap_mib = size_mib + kv_cache_mib(config, 128) + HEAP_MARGIN_MIB  # what the manifest pins
    assert load_with_heap(run_python38, bmodel, min_heap_mib << 20) == "ran 4"


INFO = """
import ctypes, json, os, sys
from sophon import _bmrt
info = _bmrt.MemInfo()
assert _bmrt.Runtime.load().bmrt.bmrt_get_bmodel_info(os.fsencode(sys.argv[1]), ctypes.byref(info))
parts = ("instruction_mem", "variable_instruction_mem", "neuron_mem", "coeff_mem", "io_mem")
print(json.dumps({part: int(getattr(info, part).size) for part in parts}))
"""
TINY = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "head_dim": 16, "ffn": 192, "padded_vocab": 640}
GLM4_9B = dict(footprint.GLM4_9B, padded_vocab=footprint.GLM4_9B_VOCAB)
MODEL_NEURON_SIZE = 5  # bmodel.fbs: Model.neuron_size


def runtime_info(run_python38, bmodel) -> dict:
    """What libbmrt's bmrt_get_bmodel_info says the bmodel needs on the device, by part."""
    code, out, err = run_python38(INFO, args=[str(bmodel)])
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("variant", ["int4", "int8"])
def test_the_coefficient_formula_is_the_runtimes(compiled, run_python38, variant):
    """footprint.py's coefficient layout (4 KiB per tensor, shared copies once, groups of 64) is what libbmrt
    uploads for the compiled tiny model, to the byte (the same holds for one compiled GLM-4-9B layer:
    111632384 / 213606400 bytes, see footprint.MEASURED)."""
    info = runtime_info(run_python38, compiled / f"glm4-9b_{variant}_1dev.bmodel")
    assert info["coeff_mem"] == footprint.coeff_bytes(TINY, 128, variant)


def declare_glm4_9b(bmodel: Path, out: Path, variant: str) -> Path:
    """A copy of the compiled tiny bmodel whose flatbuffer declares GLM-4-9B's coefficients and neurons: the
    embedding's and lm_head's coefficient sizes are the 9B's, each block pair holds 20 of its 40 layers, the
    prefill blocks' context (and the model's neuron size) is the 9B's block's. The binary section grows to
    match as a sparse file: the runtime's size check passes, nothing of it is read before loading."""
    data = bytearray(bmodel.read_bytes())
    _, header_size, fb_size, binary_size = bmodel_info.HEADER.unpack_from(data, 0)
    buf = bytes(data[header_size : header_size + fb_size])
    model = bmodel_info._Table(buf, bmodel_info._u32(buf, 0))
    layer = footprint.layer_coeff_bytes(GLM4_9B, 512, variant)
    sizes = {
        "embedding": footprint.embedding_coeff_bytes(GLM4_9B),
        "embedding_cache": footprint.embedding_coeff_bytes(GLM4_9B),
        "lm_head": footprint.lm_head_coeff_bytes(GLM4_9B, variant),
    }
    neuron = footprint.MEASURED[("glm4-9b", 512)].neuron
    end = binary_size
    for net in model.tables(bmodel_info.MODEL_NET):
        name = net.string(bmodel_info.NET_NAME)
        size = sizes.get(name, 20 * layer if name.startswith("block_") else None)
        for stage in net.tables(bmodel_info.NET_PARAMETER):
            coeff = stage.table(bmodel_info.PARAM_COEFF)
            if size is not None and coeff is not None:
                at = coeff._field(bmodel_info.COEFF_BINARY)
                struct.pack_into("<Q", data, header_size + at + 8, size)
                end = max(end, struct.unpack_from("<Q", buf, at)[0] + size)
            if re.fullmatch(r"block_\d+", name):
                struct.pack_into("<Q", data, header_size + stage._field(bmodel_info.PARAM_CTX_SIZE), neuron)
    struct.pack_into("<Q", data, header_size + model._field(MODEL_NEURON_SIZE), neuron)
    struct.pack_into("<Q", data, 12, end)  # the header's binary size
    out.write_bytes(data)
    os.truncate(out, header_size + fb_size + end)
    return out


# sophon-demo's sample/ChatGLM4/README.md: "int8模型应满足tpu内存 >= 7168MB，int4模型应满足tpu内存 >= 4608MB"
README_MIB = {"int4": 4608, "int8": 7168}


@pytest.mark.parametrize("variant", ["int4", "int8"])
def test_a_glm4_9b_sized_bmodel_fits_the_manifest_threshold_and_not_the_readmes_on_the_cmodel(
    compiled, run_python38, tmp_path, variant
):
    """libbmrt counts a bmodel declaring GLM-4-9B's sizes as footprint.py does (coefficients to the byte);
    what it counts, plus the tensors chat/model.py allocates, fits in models/glm4-9b.yaml's min_heap_mib;
    at the sample README's threshold the cmodel engine refuses to load it with the runtime's words. (Loading
    it at the heap it needs cannot be shown here: the cmodel's own device memory is smaller and it aborts,
    "Memory exhausted"; tests/emulator/test_heap.py shows that half.)"""
    bmodel = declare_glm4_9b(compiled / f"glm4-9b_{variant}_1dev.bmodel", tmp_path / "9b.bmodel", variant)
    info = runtime_info(run_python38, bmodel)
    assert info["coeff_mem"] == footprint.coeff_bytes(GLM4_9B, 512, variant)
    assert info["neuron_mem"] == footprint.MEASURED[("glm4-9b", 512)].neuron + footprint.NEURON_PAD
    threshold = load_manifest("glm4-9b").variant(variant).min_heap_mib << 20
    assert sum(info.values()) + footprint.runtime_tensor_bytes(GLM4_9B, 512) <= threshold
    readme = README_MIB[variant] << 20
    refused = load_with_heap(run_python38, bmodel, readme)
    match = re.search(LOAD_FAILED, refused)
    assert match, refused
    assert int(match.group("size"), 16) == sum(info.values()) > readme
