"""ctypes bindings of the vendor's C runtime: libbmlib (`bm_*`, device handles and memory) and libbmrt
(`bmrt_*`, bmodel loading and launching), as shipped in the tpu-mlir wheel with the BM1684X cmodel.

Struct layouts are libsophon's public headers (`bmlib_runtime.h`, `bmdef.h`, `bmruntime_interface.h`):
only the leading fields of `bm_net_info_t` that are read here are declared. The libraries are found in
`$SOPHON_SAIL_LIB_DIR`, else `/opt/sophon/libsophon-current/lib` (where a box's libsophon lives). They
carry RUNPATH `$ORIGIN`, so loading `libbmrt.so` by path finds `libbmlib.so.0`, and libbmlib's
`dlopen("libcmodel.so")` finds the cmodel, without LD_LIBRARY_PATH. Python 3.8, stdlib only.
"""

import collections
import ctypes
import os
import struct
import sys
import threading

LIB_DIR_ENV = "SOPHON_SAIL_LIB_DIR"
NATIVE_LOG_ENV = "SOPHON_SAIL_NATIVE_LOG"  # where the runtime's own prints go (default: stderr)
DEFAULT_LIB_DIR = "/opt/sophon/libsophon-current/lib"
LIBRARIES = ("libcmodel.so", "libbmlib.so.0", "libcpuop.so", "libbmrt.so")
BM_MAX_DIMS_NUM = 8


class DeviceMem(ctypes.Structure):
    """bm_device_mem_t: union {u64 device_addr; u32 reserved; i32 dmabuf_fd}, u32 flags, u32 size."""

    _fields_ = [
        ("device_addr", ctypes.c_ulong),
        ("reserved", ctypes.c_uint),
        ("dmabuf_fd", ctypes.c_int),
        ("flags", ctypes.c_uint),
        ("size", ctypes.c_uint),
    ]


class Shape(ctypes.Structure):
    _fields_ = [("num_dims", ctypes.c_int), ("dims", ctypes.c_int * BM_MAX_DIMS_NUM)]

    def to_list(self):
        return [int(self.dims[i]) for i in range(self.num_dims)]

    @classmethod
    def of(cls, dims):
        shape = cls()
        if len(dims) > BM_MAX_DIMS_NUM:
            raise RuntimeError("shape %s has more than %d dims" % (list(dims), BM_MAX_DIMS_NUM))
        shape.num_dims = len(dims)
        for i, dim in enumerate(dims):
            shape.dims[i] = int(dim)
        return shape


class BmTensor(ctypes.Structure):
    _fields_ = [
        ("dtype", ctypes.c_int),
        ("shape", Shape),
        ("device_mem", DeviceMem),
        ("st_mode", ctypes.c_int),
    ]


class StageInfo(ctypes.Structure):
    _fields_ = [
        ("input_shapes", ctypes.POINTER(Shape)),
        ("output_shapes", ctypes.POINTER(Shape)),
        ("input_mems", ctypes.POINTER(DeviceMem)),
        ("output_mems", ctypes.POINTER(DeviceMem)),
    ]


class Memory(ctypes.Structure):
    """memory_t: i64 addr, u64 size, i32 type, i32 number, 124 reserved bytes."""

    _fields_ = [
        ("addr", ctypes.c_int64),
        ("size", ctypes.c_uint64),
        ("type", ctypes.c_int),
        ("number", ctypes.c_int),
        ("reserved", ctypes.c_char * 124),
    ]


class MemInfo(ctypes.Structure):
    """mem_info_t: what a bmodel needs on the device (bmrt_get_bmodel_info)."""

    _fields_ = [
        ("instruction_mem", Memory),
        ("variable_instruction_mem", Memory),
        ("neuron_mem", Memory),
        ("coeff_mem", Memory),
        ("io_mem", Memory),
        ("reserved", Memory * 4),
    ]

    def total(self):
        parts = (self.instruction_mem, self.variable_instruction_mem, self.neuron_mem, self.coeff_mem)
        return sum(int(part.size) for part in parts + (self.io_mem,))


class NetInfo(ctypes.Structure):
    """The leading fields of bm_net_info_t (the rest is never read)."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("is_dynamic", ctypes.c_bool),
        ("input_num", ctypes.c_int),
        ("input_names", ctypes.POINTER(ctypes.c_char_p)),
        ("input_dtypes", ctypes.POINTER(ctypes.c_int)),
        ("input_scales", ctypes.POINTER(ctypes.c_float)),
        ("output_num", ctypes.c_int),
        ("output_names", ctypes.POINTER(ctypes.c_char_p)),
        ("output_dtypes", ctypes.POINTER(ctypes.c_int)),
        ("output_scales", ctypes.POINTER(ctypes.c_float)),
        ("stage_num", ctypes.c_int),
        ("stages", ctypes.POINTER(StageInfo)),
    ]


class NativeLog(object):
    """The cmodel and libbmrt print on file descriptor 1, which would corrupt a JSON-lines server on stdout.
    Native fd 1 becomes a pipe: a thread forwards every line to stderr (or `log_path`) and keeps the last
    ones, so a failed call can say what the runtime printed (`recent()`); Python's `sys.stdout` moves to a
    duplicate of the original stdout, so everything Python writes still goes where it went."""

    KEEP = 40

    def __init__(self, log_path=None):
        sys.stdout.flush()
        original = os.dup(1)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 1)
        os.close(write_end)
        sys.stdout = os.fdopen(
            original,
            "w",
            buffering=1,
            encoding=sys.stdout.encoding or "utf-8",
            errors=sys.stdout.errors or "strict",
        )
        if log_path:
            self._sink = open(log_path, "ab", buffering=0)  # noqa: SIM115 (lives as long as the process)
        else:
            self._sink = os.fdopen(os.dup(2), "wb", buffering=0)
        self._lines = collections.deque(maxlen=self.KEEP)
        self._marks = {}
        self._lock = threading.Lock()
        self._counter = 0
        self._libc = ctypes.CDLL(None)
        thread = threading.Thread(
            target=self._pump, args=(os.fdopen(read_end, "rb", buffering=0),), daemon=True
        )
        thread.start()

    def _pump(self, pipe):
        for line in iter(pipe.readline, b""):
            if line.startswith(b"\x00mark "):
                event = self._marks.pop(line[6:].strip(), None)
                if event is not None:
                    event.set()
                continue
            self._lines.append(line.decode("utf-8", "replace").rstrip())
            try:
                self._sink.write(line)
            except OSError:
                pass

    def recent(self, timeout=5.0):
        """The lines the runtime printed most recently (C buffers flushed and drained first)."""
        with self._lock:
            self._counter += 1
            key = str(self._counter).encode()
        event = threading.Event()
        self._marks[key] = event
        self._libc.fflush(None)
        os.write(1, b"\x00mark " + key + b"\n")
        event.wait(timeout)
        return list(self._lines)


def _complete_bmodel(path):
    """A bmodel's 64-byte header (magic 0xFF55AAEE, header, flatbuffer and binary sizes) matches the file."""
    try:
        with open(path, "rb") as src:
            head = src.read(20)
            size = os.fstat(src.fileno()).st_size
    except OSError:
        return False
    if len(head) < 20:
        return False
    magic, header_size, flatbuffer_size, binary_size = struct.unpack("<IIIQ", head[:20])
    return magic == 0xFF55AAEE and header_size + flatbuffer_size + binary_size <= size


def _declare(lib, name, restype, *argtypes):
    function = getattr(lib, name)
    function.restype = restype
    function.argtypes = list(argtypes)


class Runtime(object):
    """The loaded libraries with typed entry points; one per process (`load()`)."""

    _instance = None

    def __init__(self, lib_dir):
        missing = [name for name in LIBRARIES if not os.path.isfile(os.path.join(lib_dir, name))]
        if missing:
            raise RuntimeError(
                "vendor runtime not found: %s missing in %s (set %s)"
                % (", ".join(missing), lib_dir, LIB_DIR_ENV)
            )
        self.log = NativeLog(os.environ.get(NATIVE_LOG_ENV))
        mode = ctypes.RTLD_GLOBAL
        loaded = [ctypes.CDLL(os.path.join(lib_dir, name), mode=mode) for name in LIBRARIES]
        self.lib_dir = lib_dir
        self.bmlib, self.bmrt = loaded[1], loaded[3]
        self.libc = ctypes.CDLL(None)
        handle_p = ctypes.c_void_p
        b, r = self.bmlib, self.bmrt
        _declare(b, "bm_dev_request", ctypes.c_int, ctypes.POINTER(handle_p), ctypes.c_int)
        _declare(b, "bm_dev_free", None, handle_p)
        _declare(b, "bm_malloc_device_byte", ctypes.c_int, handle_p, ctypes.POINTER(DeviceMem), ctypes.c_uint)
        _declare(b, "bm_free_device", None, handle_p, DeviceMem)
        _declare(
            b, "bm_memcpy_s2d_partial", ctypes.c_int, handle_p, DeviceMem, ctypes.c_void_p, ctypes.c_uint
        )
        _declare(
            b, "bm_memcpy_d2s_partial", ctypes.c_int, handle_p, ctypes.c_void_p, DeviceMem, ctypes.c_uint
        )
        _declare(
            b,
            "bm_memcpy_d2d_byte",
            ctypes.c_int,
            handle_p,
            DeviceMem,
            ctypes.c_size_t,
            DeviceMem,
            ctypes.c_size_t,
            ctypes.c_size_t,
        )
        _declare(b, "bm_memset_device", ctypes.c_int, handle_p, ctypes.c_int, DeviceMem)
        _declare(b, "bm_thread_sync", ctypes.c_int, handle_p)
        _declare(r, "bmrt_create", ctypes.c_void_p, handle_p)
        _declare(r, "bmrt_destroy", None, ctypes.c_void_p)
        _declare(r, "bmrt_load_bmodel", ctypes.c_bool, ctypes.c_void_p, ctypes.c_char_p)
        _declare(r, "bmrt_get_bmodel_info", ctypes.c_bool, ctypes.c_char_p, ctypes.POINTER(MemInfo))
        _declare(r, "bmrt_get_network_number", ctypes.c_int, ctypes.c_void_p)
        _declare(r, "bmrt_get_network_name", ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int)
        _declare(r, "bmrt_get_network_info", ctypes.POINTER(NetInfo), ctypes.c_void_p, ctypes.c_char_p)
        _declare(
            r,
            "bmrt_launch_tensor_ex",
            ctypes.c_bool,
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.POINTER(BmTensor),
            ctypes.c_int,
            ctypes.POINTER(BmTensor),
            ctypes.c_int,
            ctypes.c_bool,
            ctypes.c_bool,
        )

    def bmodel_device_bytes(self, path):
        """Device memory the bmodel at `path` needs (instructions, neurons, coefficients, io), or None when
        the runtime cannot tell (loading then reports why)."""
        if not _complete_bmodel(path):  # bmrt_get_bmodel_info aborts the process on a broken file
            return None
        info = MemInfo()
        if not self.bmrt.bmrt_get_bmodel_info(os.fsencode(path), ctypes.byref(info)):
            return None
        return info.total()

    @classmethod
    def load(cls):
        if cls._instance is None:
            cls._instance = cls(os.environ.get(LIB_DIR_ENV) or DEFAULT_LIB_DIR)
        return cls._instance
