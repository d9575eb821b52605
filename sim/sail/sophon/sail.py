"""Emulated `sophon.sail`: the subset of SOPHON SAIL's Python API that the chat runtime uses, over numpy.

Semantics follow the sophon-sail docs (`docs/source_en/module_python/sail.Tensor.rst`, `sail.Engine.rst`):
- `Tensor(handle, shape, dtype, own_sys_data, own_dev_data)`; `update_data(array)` takes data of the tensor's
  dtype, fp16 passed as a `uint16` view (pybind11 has no float16), at most the tensor's size, shape unchanged;
  `asnumpy()` returns a copy in the tensor's shape (fp16 as numpy float16); `sync_d2d(src, offset_src,
  offset_dst, len)` copies `len` *elements*; `reshape` keeps the element count; `memory_set(c)` fills.
- `Engine(bmodel_path, dev_id | Handle, IOMode)` loads a stand-in bmodel (see `_bmodel.py`) and exposes the
  graph/tensor introspection and `process(graph, inputs, outputs)` with name, dtype and shape checks.
Violations raise `RuntimeError` (what SAIL's C++ checks surface as in Python) with a message saying what.
Python 3.8, numpy only.
"""

from __future__ import annotations

import enum
import os
import time
from typing import Dict, List, Sequence, Union

import numpy as np

from . import _bmodel, _glm

__version__ = "3.8.0+sim"


class Dtype(enum.IntEnum):
    """bm_data_type_t values as SAIL exports them."""

    BM_FLOAT32 = 0
    BM_FLOAT16 = 1
    BM_INT8 = 2
    BM_UINT8 = 3
    BM_INT16 = 4
    BM_UINT16 = 5
    BM_INT32 = 6
    BM_UINT32 = 7
    BM_BFLOAT16 = 8


BM_FLOAT32, BM_FLOAT16, BM_INT8, BM_UINT8 = Dtype.BM_FLOAT32, Dtype.BM_FLOAT16, Dtype.BM_INT8, Dtype.BM_UINT8
BM_INT16, BM_UINT16, BM_INT32, BM_UINT32 = Dtype.BM_INT16, Dtype.BM_UINT16, Dtype.BM_INT32, Dtype.BM_UINT32


class IOMode(enum.IntEnum):
    """Where Engine input/output tensors live; the emulator accepts all and keeps data in host memory."""

    SYSI = 0
    SYSO = 1
    SYSIO = 2
    DEVIO = 3


_STORAGE = {
    Dtype.BM_FLOAT32: np.float32,
    Dtype.BM_FLOAT16: np.float16,
    Dtype.BM_INT8: np.int8,
    Dtype.BM_UINT8: np.uint8,
    Dtype.BM_INT16: np.int16,
    Dtype.BM_UINT16: np.uint16,
    Dtype.BM_INT32: np.int32,
    Dtype.BM_UINT32: np.uint32,
}
# What update_data accepts for each dtype: fp16 only as a uint16 view, like pybind11-based SAIL.
_ACCEPTED = dict(_STORAGE)
_ACCEPTED[Dtype.BM_FLOAT16] = np.uint16
_FROM_GRAPH = {_glm.F32: Dtype.BM_FLOAT32, _glm.F16: Dtype.BM_FLOAT16, _glm.I32: Dtype.BM_INT32}
_DEVICE_COUNT_ENV = "SOPHON_SIM_DEVICES"
# "f16" (default): every op's output rounded to fp16, as tpu-mlir compiles the graphs; "f32": fp32 math with
# fp16 only at graph boundaries (the reference test compares that math with transformers')
MATH_ENV = "SOPHON_SAIL_EMULATOR_MATH"


def _device_count() -> int:
    return int(os.environ.get(_DEVICE_COUNT_ENV, "1"))


HEAP_ENV = "SOPHON_SAIL_NPU_HEAP_BYTES"
HEAP_FILE = "/sys/firmware/sophon-sim/tpu_heap_bytes"  # a simulated box's npu + vpp heaps (sim/hw.py)
_USED = {}  # type: Dict[int, int]  # device id -> bytes held by this process's engines and tensors


def heap_budget():
    """Bytes of device memory a process may hold: $SOPHON_SAIL_NPU_HEAP_BYTES, else the simulated box's npu +
    vpp heaps (what libbmlib allocates from), else None (no bound): the same rule as the cmodel engine's."""
    value = os.environ.get(HEAP_ENV)
    if not value:
        try:
            with open(HEAP_FILE) as handle:
                value = handle.read().strip()
        except OSError:
            return None
    try:
        return int(value)
    except ValueError:
        return None


def alloc_failed(dev_id: int, size: int) -> str:
    """libbmlib's words when the heap cannot hold `size` bytes (as a box prints them)."""
    return "[bmlib_memory][error] bm_alloc_gmem failed, dev_id = %d, size = 0x%x" % (dev_id, size)


def load_failed(path: str, dev_id: int, size: int) -> str:
    """What a box prints when a bmodel's coefficients do not fit the heap, in SAIL's error."""
    return (
        "Engine: load bmodel %s failed: %s | [BMRT][Register] FATAL:coeff alloc failed, size[0x%x] | "
        "[BMRT][load_bmodel] FATAL:Load bmodel[%s] failed" % (path, alloc_failed(dev_id, size), size, path)
    )


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


def _element_count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count


class Tensor:
    """A SAIL tensor: a flat numpy buffer of the tensor's dtype with a shape over it."""

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
            dtype = next((d for d, t in _STORAGE.items() if np.dtype(t) == data.dtype), None)
            if dtype is None:
                raise TypeError("Tensor: unsupported numpy dtype %s" % data.dtype)
            self._shape = [int(d) for d in data.shape]
            self._dtype = dtype
            self._data = data.astype(_STORAGE[dtype]).reshape(-1).copy()
            return
        shape = [int(d) for d in shape_or_data]
        if any(d <= 0 for d in shape):
            raise RuntimeError("Tensor: invalid shape %s" % shape)
        self._shape = shape
        self._dtype = Dtype(dtype)
        if self._dtype not in _STORAGE:
            raise RuntimeError("Tensor: unsupported dtype %s" % self._dtype)
        nbytes = _element_count(shape) * np.dtype(_STORAGE[self._dtype]).itemsize
        if not _reserve(handle.get_device_id(), nbytes):
            raise RuntimeError("Tensor: %s" % alloc_failed(handle.get_device_id(), nbytes))
        self._reserved = nbytes
        self._data = np.zeros(_element_count(shape), dtype=_STORAGE[self._dtype])

    def __del__(self):
        _release(self._handle.get_device_id(), getattr(self, "_reserved", 0))

    def shape(self) -> List[int]:
        return list(self._shape)

    def dtype(self) -> Dtype:
        return self._dtype

    def reshape(self, shape: Sequence[int]) -> None:
        """Give the tensor a new shape with the same element count (the data is untouched)."""
        shape = [int(d) for d in shape]
        if _element_count(shape) != self._data.size:
            raise RuntimeError(
                "Tensor.reshape: %s has %d elements, tensor has %d"
                % (shape, _element_count(shape), self._data.size)
            )
        self._shape = shape

    def update_data(self, data: np.ndarray) -> None:
        """Copy `data` into the start of the tensor; dtype must match (fp16 as a uint16 view)."""
        if not isinstance(data, np.ndarray):
            raise TypeError("update_data: expected a numpy array, got %s" % type(data).__name__)
        expected = np.dtype(_ACCEPTED[self._dtype])
        if data.dtype != expected:
            hint = " (pass float16 data as array.view(np.uint16))" if data.dtype == np.float16 else ""
            raise RuntimeError(
                "update_data: tensor is %s, data is %s, expected %s%s"
                % (self._dtype.name, data.dtype, expected, hint)
            )
        if data.size > self._data.size:
            raise RuntimeError(
                "update_data: %d elements do not fit a tensor of %d" % (data.size, self._data.size)
            )
        flat = np.ascontiguousarray(data).reshape(-1)
        self._data[: flat.size] = flat.view(self._data.dtype)

    def asnumpy(self, shape: Sequence[int] = None) -> np.ndarray:
        """A copy of the data in the tensor's shape (or `shape`, same element count)."""
        target = self._shape if shape is None else [int(d) for d in shape]
        if _element_count(target) != self._data.size:
            raise RuntimeError("asnumpy: shape %s does not match %d elements" % (target, self._data.size))
        return self._data.copy().reshape(target)

    def sync_d2d(self, src: "Tensor", offset_src: int, offset_dst: int, length: int) -> None:
        """Copy `length` elements from `src[offset_src:]` to `self[offset_dst:]` (offsets in elements)."""
        if src._dtype != self._dtype:
            raise RuntimeError("sync_d2d: dtype %s -> %s" % (src._dtype.name, self._dtype.name))
        if min(offset_src, offset_dst, length) < 0:
            raise RuntimeError("sync_d2d: negative offset or length")
        if offset_src + length > src._data.size or offset_dst + length > self._data.size:
            raise RuntimeError(
                "sync_d2d: out of bounds (src %d+%d of %d, dst %d+%d of %d)"
                % (offset_src, length, src._data.size, offset_dst, length, self._data.size)
            )
        self._data[offset_dst : offset_dst + length] = src._data[offset_src : offset_src + length]

    def memory_set(self, value) -> None:
        """Fill every element with `value`, converted to the tensor's dtype."""
        self._data.fill(value)

    def zeros(self) -> None:
        self._data.fill(0)

    def ones(self) -> None:
        self._data.fill(1)

    def own_sys_data(self) -> bool:
        return True

    def own_dev_data(self) -> bool:
        return True

    def _array(self) -> np.ndarray:
        return self._data.reshape(self._shape)


class Engine:
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
        self._graphs = {graph["name"]: graph for graph in header["graphs"]}
        self._order = [graph["name"] for graph in header["graphs"]]
        self._model = _glm.TinyGlm(header["config"], arrays, half=os.environ.get(MATH_ENV, "f16") != "f32")
        self.header = header

    def __del__(self):
        _release(self._handle.get_device_id(), getattr(self, "_reserved", 0))

    def get_handle(self) -> Handle:
        return self._handle

    def get_graph_names(self) -> List[str]:
        return list(self._order)

    def _graph(self, graph_name: str):
        if graph_name not in self._graphs:
            raise RuntimeError("Engine: no graph %r in %s" % (graph_name, self._path))
        return self._graphs[graph_name]

    def _tensor_spec(self, graph_name: str, tensor_name: str, kind: str):
        for spec in self._graph(graph_name)[kind]:
            if spec["name"] == tensor_name:
                return spec
        raise RuntimeError("Engine: graph %s has no %s tensor %r" % (graph_name, kind[:-1], tensor_name))

    def get_input_names(self, graph_name: str) -> List[str]:
        return [spec["name"] for spec in self._graph(graph_name)["inputs"]]

    def get_output_names(self, graph_name: str) -> List[str]:
        return [spec["name"] for spec in self._graph(graph_name)["outputs"]]

    def get_input_shape(self, graph_name: str, tensor_name: str) -> List[int]:
        return list(self._tensor_spec(graph_name, tensor_name, "inputs")["shape"])

    def get_output_shape(self, graph_name: str, tensor_name: str) -> List[int]:
        return list(self._tensor_spec(graph_name, tensor_name, "outputs")["shape"])

    def get_input_dtype(self, graph_name: str, tensor_name: str) -> Dtype:
        return _FROM_GRAPH[self._tensor_spec(graph_name, tensor_name, "inputs")["dtype"]]

    def get_output_dtype(self, graph_name: str, tensor_name: str) -> Dtype:
        return _FROM_GRAPH[self._tensor_spec(graph_name, tensor_name, "outputs")["dtype"]]

    def _check(self, graph_name: str, kind: str, tensors: Dict[str, Tensor]) -> None:
        specs = self._graph(graph_name)[kind]
        expected = [spec["name"] for spec in specs]
        if sorted(tensors) != sorted(expected):
            raise RuntimeError(
                "process(%s): %s must be %s, got %s" % (graph_name, kind, expected, sorted(tensors))
            )
        for spec in specs:
            tensor = tensors[spec["name"]]
            if not isinstance(tensor, Tensor):
                raise TypeError("process(%s): %s is not a sail.Tensor" % (graph_name, spec["name"]))
            if tensor.dtype() != _FROM_GRAPH[spec["dtype"]] or tensor.shape() != spec["shape"]:
                raise RuntimeError(
                    "process(%s): %s %s is %s %s, graph wants %s %s"
                    % (
                        graph_name,
                        kind[:-1],
                        spec["name"],
                        tensor.dtype().name,
                        tensor.shape(),
                        _FROM_GRAPH[spec["dtype"]].name,
                        spec["shape"],
                    )
                )

    def graph_is_dynamic(self, graph_name: str) -> bool:
        self._graph(graph_name)
        return False

    def get_max_input_shapes(self, graph_name: str) -> Dict[str, List[int]]:
        return {spec["name"]: list(spec["shape"]) for spec in self._graph(graph_name)["inputs"]}

    def get_max_output_shapes(self, graph_name: str) -> Dict[str, List[int]]:
        return {spec["name"]: list(spec["shape"]) for spec in self._graph(graph_name)["outputs"]}

    def get_input_scale(self, graph_name: str, tensor_name: str) -> float:
        self._tensor_spec(graph_name, tensor_name, "inputs")
        return 1.0

    def get_output_scale(self, graph_name: str, tensor_name: str) -> float:
        self._tensor_spec(graph_name, tensor_name, "outputs")
        return 1.0

    def process(
        self,
        graph_name: str,
        input_tensors: Dict[str, Tensor],
        output_tensors: Dict[str, Tensor],
        core_list: Sequence[int] = (),
    ) -> None:
        """Run `graph_name`: read every input (copies, so an output may alias an input), write outputs.
        `core_list` (multi-core processors) is accepted and ignored, as on the single-core BM1684X."""
        self._check(graph_name, "inputs", input_tensors)
        self._check(graph_name, "outputs", output_tensors)
        _simulated_tpu_time()
        arrays = {name: tensor._array().copy() for name, tensor in input_tensors.items()}
        results = self._model.run(graph_name, arrays)
        for name, tensor in output_tensors.items():
            tensor._data[:] = results[name].astype(tensor._data.dtype).reshape(-1)


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
