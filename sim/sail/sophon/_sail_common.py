"""What both `sophon.sail` engines share: the numpy emulator (`sim/sail/sophon/sail.py`) and the one over the
vendor runtime on the cmodel (`sim/sail_cmodel/sophon/sail.py`).

- SAIL's enums (`Dtype`, the `BM_*` names, `IOMode`) and the numpy storage of each dtype;
- the device-heap bound (`heap_budget`) and libbmlib/libbmrt's words when it is exceeded;
- `TensorBase` and `EngineBase`: the API surface both engines' Tensor and Engine have (shape bookkeeping,
  graph/tensor introspection) and the argument checks SAIL's C++ makes, as `RuntimeError`s with one wording.
Each engine keeps only where the data lives and how graphs run.

The file lives here; `sim/sail_cmodel/sophon/_sail_common.py` is a link to it, so each `sophon` package (on a
box's path, in a wheel, in a test's PYTHONPATH) carries its own copy. Python 3.8, numpy only.
"""

from __future__ import annotations

import enum
import os
from typing import Dict, List, Optional, Sequence

import numpy as np


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
    """Where Engine input/output tensors live (`sail.IOMode`)."""

    SYSI = 0
    SYSO = 1
    SYSIO = 2
    DEVIO = 3


# The numpy type each dtype's data is kept in (bfloat16 has none: an engine that takes it adds its own).
STORAGE = {
    Dtype.BM_FLOAT32: np.float32,
    Dtype.BM_FLOAT16: np.float16,
    Dtype.BM_INT8: np.int8,
    Dtype.BM_UINT8: np.uint8,
    Dtype.BM_INT16: np.int16,
    Dtype.BM_UINT16: np.uint16,
    Dtype.BM_INT32: np.int32,
    Dtype.BM_UINT32: np.uint32,
}


def accepted(storage: Dict[Dtype, type]) -> Dict[Dtype, type]:
    """What update_data accepts for each dtype of `storage`: fp16 only as a uint16 view, like pybind11-based
    SAIL (pybind11 has no float16)."""
    table = dict(storage)
    table[Dtype.BM_FLOAT16] = np.uint16
    return table


HEAP_ENV = "SOPHON_SAIL_NPU_HEAP_BYTES"
HEAP_FILE = "/sys/firmware/sophon-sim/tpu_heap_bytes"  # a simulated box's npu + vpp heaps (sim/hw.py)


def heap_budget() -> Optional[int]:
    """Bytes of device memory a process may hold: $SOPHON_SAIL_NPU_HEAP_BYTES, else the simulated box's npu +
    vpp heaps, else None (no bound). On a box libbmlib allocates from the ion npu heap, then the vpp heap
    (never vpu), and they bound what a process holds; the emulator has no device and the cmodel has one flat
    memory that aborts the process when it is exhausted, so both engines keep the bound themselves, before
    any memory is taken."""
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


def element_count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count


class TensorBase(object):
    """What a SAIL tensor is to its caller: `_dtype`, `_shape` over a flat host buffer `_host` of the dtype's
    storage (the data itself in the emulator, the staging copy of the device memory on the cmodel), and the
    checks of SAIL's Tensor methods. An engine's Tensor adds how data moves (`update_data`, `asnumpy`,
    `sync_d2d`, `memory_set`) and calls the `_checked_*` methods first."""

    _accepted = accepted(STORAGE)  # type: Dict[Dtype, type]

    def shape(self) -> List[int]:
        return list(self._shape)

    def dtype(self) -> Dtype:
        return self._dtype

    def reshape(self, shape: Sequence[int]) -> None:
        """Give the tensor a new shape with the same element count (the data is untouched)."""
        shape = [int(d) for d in shape]
        if element_count(shape) != self._host.size:
            raise RuntimeError(
                "Tensor.reshape: %s has %d elements, tensor has %d"
                % (shape, element_count(shape), self._host.size)
            )
        self._shape = shape

    def _checked_update(self, data: np.ndarray) -> np.ndarray:
        """`data` flat and contiguous, once it is of the tensor's dtype (fp16 as a uint16 view) and fits."""
        if not isinstance(data, np.ndarray):
            raise TypeError("update_data: expected a numpy array, got %s" % type(data).__name__)
        expected = np.dtype(self._accepted[self._dtype])
        if data.dtype != expected:
            hint = " (pass float16 data as array.view(np.uint16))" if data.dtype == np.float16 else ""
            raise RuntimeError(
                "update_data: tensor is %s, data is %s, expected %s%s"
                % (self._dtype.name, data.dtype, expected, hint)
            )
        if data.size > self._host.size:
            raise RuntimeError(
                "update_data: %d elements do not fit a tensor of %d" % (data.size, self._host.size)
            )
        return np.ascontiguousarray(data).reshape(-1)

    def _checked_shape(self, shape: Optional[Sequence[int]]) -> List[int]:
        """The shape `asnumpy(shape)` returns: the tensor's own, or `shape` with the same element count."""
        target = self._shape if shape is None else [int(d) for d in shape]
        if element_count(target) != self._host.size:
            raise RuntimeError("asnumpy: shape %s does not match %d elements" % (target, self._host.size))
        return target

    def _checked_d2d(self, src: "TensorBase", offset_src: int, offset_dst: int, length: int) -> None:
        """sync_d2d's checks: same dtype, offsets and length (in elements) inside both tensors."""
        if src._dtype != self._dtype:
            raise RuntimeError("sync_d2d: dtype %s -> %s" % (src._dtype.name, self._dtype.name))
        if min(offset_src, offset_dst, length) < 0:
            raise RuntimeError("sync_d2d: negative offset or length")
        if offset_src + length > src._host.size or offset_dst + length > self._host.size:
            raise RuntimeError(
                "sync_d2d: out of bounds (src %d+%d of %d, dst %d+%d of %d)"
                % (offset_src, length, src._host.size, offset_dst, length, self._host.size)
            )

    def memory_set(self, value) -> None:
        raise NotImplementedError

    def zeros(self) -> None:
        self.memory_set(0)

    def ones(self) -> None:
        self.memory_set(1)

    def own_sys_data(self) -> bool:
        return True

    def own_dev_data(self) -> bool:
        return True


class EngineBase(object):
    """SAIL's graph and tensor introspection over what an engine read from its bmodel: `_path`, `_handle`,
    `_order` (graph names in file order) and `_info` (graph name -> {"dynamic", "inputs", "outputs"}, each
    tensor a dict of "name", "dtype" (a Dtype), "scale" and "shape"), and `process`'s binding checks."""

    def get_handle(self):
        return self._handle

    def get_graph_names(self) -> List[str]:
        return list(self._order)

    def _graph(self, graph_name: str):
        if graph_name not in self._info:
            raise RuntimeError("Engine: no graph %r in %s" % (graph_name, self._path))
        return self._info[graph_name]

    def _spec(self, graph_name: str, tensor_name: str, kind: str):
        for spec in self._graph(graph_name)[kind]:
            if spec["name"] == tensor_name:
                return spec
        raise RuntimeError("Engine: graph %s has no %s tensor %r" % (graph_name, kind[:-1], tensor_name))

    def get_input_names(self, graph_name: str) -> List[str]:
        return [spec["name"] for spec in self._graph(graph_name)["inputs"]]

    def get_output_names(self, graph_name: str) -> List[str]:
        return [spec["name"] for spec in self._graph(graph_name)["outputs"]]

    def get_input_shape(self, graph_name: str, tensor_name: str) -> List[int]:
        return list(self._spec(graph_name, tensor_name, "inputs")["shape"])

    def get_output_shape(self, graph_name: str, tensor_name: str) -> List[int]:
        return list(self._spec(graph_name, tensor_name, "outputs")["shape"])

    def get_input_dtype(self, graph_name: str, tensor_name: str) -> Dtype:
        return self._spec(graph_name, tensor_name, "inputs")["dtype"]

    def get_output_dtype(self, graph_name: str, tensor_name: str) -> Dtype:
        return self._spec(graph_name, tensor_name, "outputs")["dtype"]

    def get_input_scale(self, graph_name: str, tensor_name: str) -> float:
        return self._spec(graph_name, tensor_name, "inputs")["scale"]

    def get_output_scale(self, graph_name: str, tensor_name: str) -> float:
        return self._spec(graph_name, tensor_name, "outputs")["scale"]

    def graph_is_dynamic(self, graph_name: str) -> bool:
        return self._graph(graph_name)["dynamic"]

    def get_max_input_shapes(self, graph_name: str) -> Dict[str, List[int]]:
        return {spec["name"]: list(spec["shape"]) for spec in self._graph(graph_name)["inputs"]}

    def get_max_output_shapes(self, graph_name: str) -> Dict[str, List[int]]:
        return {spec["name"]: list(spec["shape"]) for spec in self._graph(graph_name)["outputs"]}

    def _takes(self, spec, tensor: TensorBase) -> bool:
        """Whether the graph's tensor `spec` can be bound to `tensor` (the engine's rule)."""
        raise NotImplementedError

    def _bound(self, graph_name: str, kind: str, tensors: Dict[str, TensorBase]):
        """[(spec, tensor)] in the graph's order, once `tensors` names exactly the graph's `kind` ("inputs" or
        "outputs") and each is a sail.Tensor the engine `_takes` for it."""
        specs = self._graph(graph_name)[kind]
        expected = [spec["name"] for spec in specs]
        if sorted(tensors) != sorted(expected):
            raise RuntimeError(
                "process(%s): %s must be %s, got %s" % (graph_name, kind, expected, sorted(tensors))
            )
        pairs = []
        for spec in specs:
            tensor = tensors[spec["name"]]
            if not isinstance(tensor, TensorBase):
                raise TypeError("process(%s): %s is not a sail.Tensor" % (graph_name, spec["name"]))
            if not self._takes(spec, tensor):
                raise RuntimeError(
                    "process(%s): %s %s is %s %s, graph wants %s %s"
                    % (
                        graph_name,
                        kind[:-1],
                        spec["name"],
                        tensor.dtype().name,
                        tensor.shape(),
                        spec["dtype"].name,
                        spec["shape"],
                    )
                )
            pairs.append((spec, tensor))
        return pairs
