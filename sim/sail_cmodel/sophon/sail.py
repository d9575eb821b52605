"""`sophon.sail` over the vendor's runtime: the subset of SOPHON SAIL's Python API that the chat runtime uses
(same names and semantics as `sim/sail/sophon/sail.py`, the numpy emulator), implemented on libbmrt and
libbmlib through ctypes. On this machine libbmlib drives the BM1684X cmodel (the vendor's CPU model of the
TPU), so real compiled bmodels run here exactly as the vendor's runtime runs them.

- `Handle(dev_id)`: one bm_handle per device id in a process (tensors and engines made from the same id
  share device memory, as on a box).
- `Tensor(handle, shape, dtype, own_sys_data, own_dev_data)`: device memory from `bm_malloc_device_byte`;
  `update_data` (fp16 as a uint16 view), `asnumpy`, `sync_d2d` (offsets and length in elements),
  `memory_set`, `reshape`.
- `Engine(bmodel_path, dev_id | Handle, IOMode)`: `bmrt_load_bmodel`, graph/tensor introspection from
  `bm_net_info_t`, `process(graph, inputs, outputs)` through `bmrt_launch_tensor_ex` with the caller's
  device memory.
Errors are `RuntimeError`s worded like SAIL's. Teardown follows what the runtime needs: every tensor is freed,
then every runtime destroyed, then every device freed (at exit too), whatever order Python collects them in.
What the emulator has too (the enums, the heap bound, the API's checks and their words) is `_sail_common.py`,
a link to `sim/sail/sophon/_sail_common.py`. Python 3.8, numpy + ctypes.
"""

import atexit
import ctypes
import os
import weakref

import numpy as np

from . import _bmrt
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
    accepted,
    alloc_failed,
    element_count,
    heap_budget,
    load_failed,
)

__version__ = "3.8.0+bmrt-cmodel"


_STORAGE = dict(STORAGE)
_STORAGE[Dtype.BM_BFLOAT16] = np.uint16  # the runtime takes bf16 tensors: their bits, as uint16

_LIVE_TENSORS = weakref.WeakSet()  # type: weakref.WeakSet
_LIVE_ENGINES = weakref.WeakSet()  # type: weakref.WeakSet
_DEVICES = {}  # type: Dict[int, "_Device"]
_CLOSED = [False]


class _Device(object):
    """The native bm_handle of one device id, shared by every Handle, Tensor and Engine of the process."""

    def __init__(self, dev_id):
        self.rt = _bmrt.Runtime.load()
        self.dev_id = dev_id
        self.budget = heap_budget()
        self.used = 0
        self.ptr = ctypes.c_void_p()
        status = self.rt.bmlib.bm_dev_request(ctypes.byref(self.ptr), dev_id)
        if status != 0 or not self.ptr:
            raise RuntimeError("bm_dev_request failed: no device %d (status %d)" % (dev_id, status))

    def fits(self, size):
        return self.budget is None or self.used + size <= self.budget

    @classmethod
    def get(cls, dev_id):
        if _CLOSED[0]:
            raise RuntimeError("sail: the runtime is shut down")
        if dev_id not in _DEVICES:
            _DEVICES[dev_id] = cls(dev_id)
        return _DEVICES[dev_id]


def _shutdown():
    """Free every tensor, destroy every runtime, then free the devices (the order libbmlib requires)."""
    for tensor in list(_LIVE_TENSORS):
        tensor._free()
    for engine in list(_LIVE_ENGINES):
        engine._destroy()
    for device in list(_DEVICES.values()):
        device.rt.bmlib.bm_dev_free(device.ptr)
    _DEVICES.clear()
    _CLOSED[0] = True


atexit.register(_shutdown)


def _why(rt):
    """The runtime's own error lines ([BMRT] FATAL/WRONG, [BMODEL] FATAL, [bmlib...][error]), if any."""
    markers = ("FATAL", "WRONG", "[error]", "ASSERT")
    lines = [line for line in rt.log.recent() if any(m in line for m in markers)]
    return (": " + " | ".join(lines[-4:])) if lines else ""


class Handle(object):
    """A device handle (`sail.Handle(dev_id)`)."""

    def __init__(self, dev_id=0):
        self._device = _Device.get(int(dev_id))
        self._dev_id = int(dev_id)

    def get_device_id(self):
        return self._dev_id


class Tensor(TensorBase):
    """A SAIL tensor in device memory (plus a host staging buffer, `_host`, of the same size)."""

    _accepted = accepted(_STORAGE)

    def __init__(self, handle, shape_or_data, dtype=Dtype.BM_FLOAT32, own_sys_data=True, own_dev_data=True):
        if not isinstance(handle, Handle):
            raise TypeError("Tensor: first argument must be a sail.Handle")
        self._device = handle._device
        self._mem = None
        data = None
        if isinstance(shape_or_data, np.ndarray):
            data = shape_or_data
            found = [d for d, t in STORAGE.items() if np.dtype(t) == data.dtype]  # bf16 only by its Dtype
            if not found:
                raise TypeError("Tensor: unsupported numpy dtype %s" % data.dtype)
            dtype, shape = found[0], [int(d) for d in data.shape]
        else:
            shape = [int(d) for d in shape_or_data]
        if any(d <= 0 for d in shape):
            raise RuntimeError("Tensor: invalid shape %s" % shape)
        self._shape = shape
        self._dtype = Dtype(dtype)
        self._host = np.zeros(element_count(shape), dtype=_STORAGE[self._dtype])
        self._nbytes = self._host.nbytes
        if not self._device.fits(self._nbytes):
            raise RuntimeError("Tensor: %s" % alloc_failed(self._device.dev_id, self._nbytes))
        mem = _bmrt.DeviceMem()
        status = self._device.rt.bmlib.bm_malloc_device_byte(
            self._device.ptr, ctypes.byref(mem), self._nbytes
        )
        if status != 0:
            raise RuntimeError(
                "bm_malloc_device_byte failed: %d bytes on device %d (status %d): device memory exhausted?"
                % (self._nbytes, self._device.dev_id, status)
            )
        self._mem = mem
        self._device.used += self._nbytes
        _LIVE_TENSORS.add(self)
        if data is not None:
            self._host[:] = data.reshape(-1)
            self._upload(self._host)

    def _free(self):
        if self._mem is not None and not _CLOSED[0]:
            self._device.rt.bmlib.bm_free_device(self._device.ptr, self._mem)
            self._device.used -= self._nbytes
        self._mem = None

    def __del__(self):
        try:
            self._free()
        except Exception:  # interpreter teardown: the library may already be gone
            pass

    def _check_live(self):
        if self._mem is None:
            raise RuntimeError("Tensor: device memory was freed")

    def _upload(self, flat, offset_bytes=0):
        self._check_live()
        flat = np.ascontiguousarray(flat)
        status = self._device.rt.bmlib.bm_memcpy_s2d_partial(
            self._device.ptr, self._mem, flat.ctypes.data_as(ctypes.c_void_p), flat.nbytes
        )
        if status != 0:
            raise RuntimeError("bm_memcpy_s2d_partial failed (status %d)" % status)

    def update_data(self, data):
        """Copy `data` into the start of the tensor's device memory; dtype must match (fp16 as uint16)."""
        self._upload(self._checked_update(data))

    def asnumpy(self, shape=None):
        """A copy of the device data in the tensor's shape (fp16 as numpy float16)."""
        self._check_live()
        target = self._checked_shape(shape)
        status = self._device.rt.bmlib.bm_memcpy_d2s_partial(
            self._device.ptr, self._host.ctypes.data_as(ctypes.c_void_p), self._mem, self._nbytes
        )
        if status != 0:
            raise RuntimeError("bm_memcpy_d2s_partial failed (status %d)" % status)
        return self._host.copy().reshape(target)

    def sync_d2d(self, src, offset_src, offset_dst, length):
        """Copy `length` elements from `src[offset_src:]` to `self[offset_dst:]` on the device."""
        self._checked_d2d(src, offset_src, offset_dst, length)
        self._check_live()
        src._check_live()
        size = self._host.itemsize
        status = self._device.rt.bmlib.bm_memcpy_d2d_byte(
            self._device.ptr, self._mem, offset_dst * size, src._mem, offset_src * size, length * size
        )
        if status != 0:
            raise RuntimeError("bm_memcpy_d2d_byte failed (status %d)" % status)

    def memory_set(self, value):
        """Fill every element with `value` (bm_memset_device takes only multiples of 4 bytes: staged on the
        host otherwise)."""
        if value == 0 and self._nbytes % 4 == 0:
            self._check_live()
            status = self._device.rt.bmlib.bm_memset_device(self._device.ptr, 0, self._mem)
            if status != 0:
                raise RuntimeError("bm_memset_device failed (status %d)" % status)
            return
        self._host.fill(value)
        self._upload(self._host)


class Engine(EngineBase):
    """A bmodel loaded by libbmrt; introspection from bm_net_info_t, `process` with the caller's tensors."""

    def __init__(self, bmodel_path, dev, mode=IOMode.SYSIO):
        self._handle = dev if isinstance(dev, Handle) else Handle(dev)
        self._device = self._handle._device
        self._path = bmodel_path
        self._bmrt = None
        self._order = None
        if not os.path.isfile(bmodel_path):
            raise RuntimeError("Engine: bmodel %s does not exist" % bmodel_path)
        bmrt = self._device.rt.bmrt
        self._reserved = self._device.rt.bmodel_device_bytes(bmodel_path) or 0
        if not self._device.fits(self._reserved):
            raise RuntimeError(load_failed(bmodel_path, self._device.dev_id, self._reserved))
        pointer = bmrt.bmrt_create(self._device.ptr)
        if not pointer:
            raise RuntimeError("bmrt_create failed on device %d" % self._device.dev_id)
        self._bmrt = pointer
        _LIVE_ENGINES.add(self)
        if not bmrt.bmrt_load_bmodel(pointer, os.fsencode(bmodel_path)):
            self._destroy()
            raise RuntimeError("Engine: load bmodel %s failed%s" % (bmodel_path, _why(self._device.rt)))
        self._device.used += self._reserved
        self._order = [
            bmrt.bmrt_get_network_name(pointer, i).decode()
            for i in range(bmrt.bmrt_get_network_number(pointer))
        ]
        self._info = {name: self._read_info(name) for name in self._order}

    def _read_info(self, name):
        info = self._device.rt.bmrt.bmrt_get_network_info(self._bmrt, name.encode()).contents
        stage = info.stages[0]

        def tensors(count, names, dtypes, scales, shapes):
            return [
                {
                    "name": names[i].decode(),
                    "dtype": Dtype(dtypes[i]),
                    "scale": float(scales[i]),
                    "shape": shapes[i].to_list(),
                }
                for i in range(count)
            ]

        return {
            "dynamic": bool(info.is_dynamic),
            "stages": int(info.stage_num),
            "inputs": tensors(
                info.input_num, info.input_names, info.input_dtypes, info.input_scales, stage.input_shapes
            ),
            "outputs": tensors(
                info.output_num,
                info.output_names,
                info.output_dtypes,
                info.output_scales,
                stage.output_shapes,
            ),
        }

    def _destroy(self):
        if self._bmrt is not None and not _CLOSED[0]:
            self._device.rt.bmrt.bmrt_destroy(self._bmrt)
            if self._order is not None:
                self._device.used -= self._reserved
        self._bmrt = None

    def __del__(self):
        try:
            self._destroy()
        except Exception:  # interpreter teardown: the library may already be gone
            pass

    def _takes(self, spec, tensor):
        return tensor._dtype == spec["dtype"] and tensor._host.size >= element_count(spec["shape"])

    def _bind(self, graph_name, kind, tensors):
        pairs = self._bound(graph_name, kind, tensors)
        array = (_bmrt.BmTensor * len(pairs))()
        for slot, (spec, tensor) in zip(array, pairs):
            tensor._check_live()
            slot.dtype = int(spec["dtype"])
            slot.shape = _bmrt.Shape.of(tensor.shape() if kind == "inputs" else spec["shape"])
            slot.device_mem = tensor._mem
            slot.st_mode = 0
        return array

    def process(self, graph_name, input_tensors, output_tensors, core_list=()):
        """Run `graph_name` on the device with the given tensors (bound by name), and wait for it."""
        inputs = self._bind(graph_name, "inputs", input_tensors)
        outputs = self._bind(graph_name, "outputs", output_tensors)
        rt = self._device.rt
        ok = rt.bmrt.bmrt_launch_tensor_ex(
            self._bmrt, graph_name.encode(), inputs, len(inputs), outputs, len(outputs), True, False
        )
        if not ok:
            raise RuntimeError("Engine.process(%s): bmrt_launch_tensor_ex failed%s" % (graph_name, _why(rt)))
        status = rt.bmlib.bm_thread_sync(self._device.ptr)
        if status != 0:
            raise RuntimeError("Engine.process(%s): bm_thread_sync failed (status %d)" % (graph_name, status))
