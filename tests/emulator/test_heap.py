"""The npu heap bounds what the emulator loads, as the ion heap does on a box: a stand-in whose weights do not
fit fails to load with libbmlib/libbmrt's words, one that fits but whose KV cache does not fails when the
runtime allocates it, and enough heap runs it. (tests/vendor/test_heaps.py shows the same on the cmodel.)"""

from __future__ import annotations

import re

import pytest

from chat.errors import ModelError
from chat.model import GlmModel

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
