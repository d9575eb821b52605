"""Emulated `sophon.sail`: the subset of SOPHON SAIL's Python API that the chat runtime uses, over numpy.

Semantics follow the sophon-sail docs (`docs/source_en/module_python/sail.Tensor.rst`, `sail.Engine.rst`):
- `Tensor(handle, shape, dtype, own_sys_data, own_dev_data)`; `update_data(array)` takes data of the tensor's
  dtype, fp16 passed as a `uint16` view (pybind11 has no float16), at most the tensor's size, shape unchanged;
  `asnumpy()` returns a copy in the tensor's shape (fp16 as numpy float16); `sync_d2d(src, offset_src,
  offset_dst, len)` copies `len` *elements*; `reshape` keeps the element count; `memory_set(c)` fills.
- `Engine(bmodel_path, dev_id | Handle, IOMode)` loads a stand-in bmodel (see `_bmodel.py`) and exposes the
  graph/tensor introspection and `process(graph, inputs, outputs)` with name, dtype and shape checks.
Violations raise `RuntimeError` (what SAIL's C++ checks surface as in Python) with a message saying what.
Every IOMode is accepted; the data stays in host memory. What the cmodel engine shares (enums, the heap bound,
the API's checks and their words) is in `_sail_common.py`. Python 3.8, numpy only.
"""

from __future__ import annotations

import os
import time
from typing import Dict, Sequence, Union

import numpy as np

from . import _bmodel, _glm
from ._sail_common import (  # noqa: F401 (SAIL's names, re-exported)
    BM_FLOAT16,
    BM_FLOAT32,
    BM_INT8,
    BM_INT16,
    BM_INT32,
    BM_UINT8,
    BM_UINT16,
    BM_UINT32,
    STORAGE,
    Dtype,
    EngineBase,
    IOMode,
    TensorBase,
    alloc_failed,
    element_count,
    heap_budget,
    load_failed,
)

__version__ = "3.8.0+sim"


_FROM_GRAPH = {_glm.F32: Dtype.BM_FLOAT32, _glm.F16: Dtype.BM_FLOAT16, _glm.I32: Dtype.BM_INT32}
_DEVICE_COUNT_ENV = "SOPHON_SIM_DEVICES"
# "f16" (default): every op's output rounded to fp16, as tpu-mlir compiles the graphs; "f32": fp32 math with
# fp16 only at graph boundaries (the reference test compares that math with transformers')
MATH_ENV = "SOPHON_SAIL_EMULATOR_MATH"


def _device_count() -> int:
    return int(os.environ.get(_DEVICE_COUNT_ENV, "1"))


_USED = {}  # type: Dict[int, int]  # device id -> bytes held by this process's engines and tensors


def _reserve(dev_id: int, size: int) -> bool:
    budget = heap_budget()
    if budget is not None and _USED.get(dev_id, 0) + size > budget:
        return False
    _USED[dev_id] = _USED.get(dev_id, 0) + size
    return True


def _release(dev_id: int, size: int) -> None:
    _USED[dev_id] = max(0, _USED.get(dev_id, 0) - size)


class Handle:
    """A device handle; device ids run from 0 to $SOPHON_SIM_DEVICES - 1 (default 1 device)."""

    def __init__(self, dev_id: int = 0) -> None:
        if not 0 <= int(dev_id) < _device_count():
            raise RuntimeError("bm_dev_request failed: no device %d (%d present)" % (dev_id, _device_count()))
        self._dev_id = int(dev_id)

    def get_device_id(self) -> int:
        return self._dev_id


class Tensor(TensorBase):
    """A SAIL tensor: a flat numpy buffer (`_host`) of the tensor's dtype with a shape over it."""

    def __init__(
        self,
        handle: Handle,
        shape_or_data,
        dtype: Dtype = Dtype.BM_FLOAT32,
        own_sys_data=True,
        own_dev_data=True,
    ):
        if not isinstance(handle, Handle):
            raise TypeError("Tensor: first argument must be a sail.Handle")
        self._handle = handle
        if isinstance(shape_or_data, np.ndarray):
            data = shape_or_data
            dtype = next((d for d, t in STORAGE.items() if np.dtype(t) == data.dtype), None)
            if dtype is None:
                raise TypeError("Tensor: unsupported numpy dtype %s" % data.dtype)
            self._shape = [int(d) for d in data.shape]
            self._dtype = dtype
            self._host = data.astype(STORAGE[dtype]).reshape(-1).copy()
            return
        shape = [int(d) for d in shape_or_data]
        if any(d <= 0 for d in shape):
            raise RuntimeError("Tensor: invalid shape %s" % shape)
        self._shape = shape
        self._dtype = Dtype(dtype)
        if self._dtype not in STORAGE:
            raise RuntimeError("Tensor: unsupported dtype %s" % self._dtype)
        nbytes = element_count(shape) * np.dtype(STORAGE[self._dtype]).itemsize
        if not _reserve(handle.get_device_id(), nbytes):
            raise RuntimeError("Tensor: %s" % alloc_failed(handle.get_device_id(), nbytes))
        self._reserved = nbytes
        self._host = np.zeros(element_count(shape), dtype=STORAGE[self._dtype])

    def __del__(self):
        _release(self._handle.get_device_id(), getattr(self, "_reserved", 0))

    def update_data(self, data: np.ndarray) -> None:
        """Copy `data` into the start of the tensor; dtype must match (fp16 as a uint16 view)."""
        flat = self._checked_update(data)
        self._host[: flat.size] = flat.view(self._host.dtype)

    def asnumpy(self, shape: Sequence[int] = None) -> np.ndarray:
        """A copy of the data in the tensor's shape (or `shape`, same element count)."""
        return self._host.copy().reshape(self._checked_shape(shape))

    def sync_d2d(self, src: "Tensor", offset_src: int, offset_dst: int, length: int) -> None:
        """Copy `length` elements from `src[offset_src:]` to `self[offset_dst:]` (offsets in elements)."""
        self._checked_d2d(src, offset_src, offset_dst, length)
        self._host[offset_dst : offset_dst + length] = src._host[offset_src : offset_src + length]

    def memory_set(self, value) -> None:
        """Fill every element with `value`, converted to the tensor's dtype."""
        self._host.fill(value)

    def _array(self) -> np.ndarray:
        return self._host.reshape(self._shape)


def _graph_info(graph) -> dict:
    """A stand-in's graph as EngineBase reads it: static, every tensor's scale 1."""

    def tensors(specs):
        return [
            {
                "name": spec["name"],
                "dtype": _FROM_GRAPH[spec["dtype"]],
                "scale": 1.0,
                "shape": list(spec["shape"]),
            }
            for spec in specs
        ]

    return {"dynamic": False, "inputs": tensors(graph["inputs"]), "outputs": tensors(graph["outputs"])}


class Engine(EngineBase):
    """Loads a stand-in bmodel and runs its graphs with SAIL's introspection and `process` API."""

    def __init__(self, bmodel_path: str, dev: Union[int, Handle], mode: IOMode = IOMode.SYSIO) -> None:
        self._handle = dev if isinstance(dev, Handle) else Handle(dev)
        try:
            header, arrays = _bmodel.read_bmodel(bmodel_path)
        except _bmodel.BmodelFormatError as error:
            raise RuntimeError("Engine: load bmodel failed: %s" % error)
        need = int(header.get("device_bytes") or header["payload_bytes"])
        if not _reserve(self._handle.get_device_id(), need):
            raise RuntimeError(load_failed(bmodel_path, self._handle.get_device_id(), need))
        self._reserved = need
        self._path = bmodel_path
        self._info = {graph["name"]: _graph_info(graph) for graph in header["graphs"]}
        self._order = [graph["name"] for graph in header["graphs"]]
        self._model = _glm.TinyGlm(header["config"], arrays, half=os.environ.get(MATH_ENV, "f16") != "f32")
        self.header = header

    def __del__(self):
        _release(self._handle.get_device_id(), getattr(self, "_reserved", 0))

    def _takes(self, spec, tensor: Tensor) -> bool:
        return tensor.dtype() == spec["dtype"] and tensor.shape() == spec["shape"]

    def process(
        self,
        graph_name: str,
        input_tensors: Dict[str, Tensor],
        output_tensors: Dict[str, Tensor],
        core_list: Sequence[int] = (),
    ) -> None:
        """Run `graph_name`: read every input (copies, so an output may alias an input), write outputs.
        `core_list` (multi-core processors) is accepted and ignored, as on the single-core BM1684X."""
        self._bound(graph_name, "inputs", input_tensors)
        self._bound(graph_name, "outputs", output_tensors)
        _simulated_tpu_time()
        arrays = {name: tensor._array().copy() for name, tensor in input_tensors.items()}
        results = self._model.run(graph_name, arrays)
        for name, tensor in output_tensors.items():
            tensor._host[:] = results[name].astype(tensor._host.dtype).reshape(-1)


TPU_DELAY_FILE = "/sys/firmware/sophon-sim/tpu_delay_ms"  # the simulator's `slow-tpu MS` fault


def _simulated_tpu_time():
    """With the simulator's `slow-tpu` fault (or SOPHON_SIM_TPU_DELAY_MS), each graph run takes that long."""
    try:
        delay_ms = float(os.environ.get("SOPHON_SIM_TPU_DELAY_MS") or 0)
        if not delay_ms:
            with open(TPU_DELAY_FILE) as handle:
                delay_ms = float(handle.read().strip() or 0)
    except (OSError, ValueError):
        return
    if delay_ms > 0:
        time.sleep(delay_ms / 1000.0)
