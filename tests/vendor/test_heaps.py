"""The npu heap bounds what loads on the cmodel engine too, with the same words as the emulator (and a box):
weights that do not fit refuse to load, a KV cache that does not fit fails when allocated, and the heap
`model compile` writes into the manifest (min_heap_mib) is enough to load and run the compiled model."""

from __future__ import annotations

import re

import pytest

from provision.compile.register import HEAP_MARGIN_MIB, kv_cache_mib
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
