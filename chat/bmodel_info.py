"""What a real bmodel file holds, read from its bytes: chip, version, nets, static/dynamic, stages, subnets,
input/output tensor names, shapes, dtypes, scales — the facts `model_tool --info` prints.

A bmodel is a 64-byte header (magic 0xFF55AAEE, header size, flatbuffer size, u64 binary size) followed by a
flatbuffer of the schema `bmodel.fbs` (shipped in the tpu-mlir wheel) and the binary section (coefficients,
commands, the kernel module). This module is a small flatbuffer reader for the few tables it needs (Model,
Net, NetParameter, Tensor, Shape, SubNet, KernelModule); no flatbuffers package. Python 3.8, stdlib only.
"""

import struct
from typing import Dict, List, NamedTuple, Optional

MAGIC = 0xFF55AAEE
HEADER = struct.Struct("<IIIQ44x")  # magic, header_size, flatbuffers_size, binary_size, reserved[11]
DTYPES = {0: "float32", 1: "float16", 2: "int8", 3: "uint8", 4: "int16", 5: "uint16", 6: "int32", 7: "uint32"}
DTYPES.update({8: "bfloat16", 9: "int4", 10: "uint4"})


class BmodelError(ValueError):
    """The file is not a bmodel this reader understands; the message says what is wrong."""


class TensorInfo(NamedTuple):
    name: str
    dtype: str
    shape: List[int]
    scale: float
    zero_point: int


class StageInfo(NamedTuple):
    inputs: List[TensorInfo]
    outputs: List[TensorInfo]
    subnets: int
    core_num: int
    coeff_size: int
    ctx_size: int


class NetInfo(NamedTuple):
    name: str
    dynamic: bool
    stages: List[StageInfo]


class BmodelInfo(NamedTuple):
    path: str
    version: str
    chip: str
    time: str
    kernel_module: Optional[str]
    kernel_size: int
    nets: List[NetInfo]
    file_size: int
    expected_size: int

    def net(self, name: str) -> NetInfo:
        for net in self.nets:
            if net.name == name:
                return net
        raise KeyError(name)


class _Table(object):
    """A flatbuffer table at `pos` in `buf`: fields by index, per its vtable."""

    __slots__ = ("buf", "pos", "vtable", "vsize")

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos
        self.vtable = pos - _i32(buf, pos)
        self.vsize = _u16(buf, self.vtable)

    def _field(self, index: int) -> int:
        entry = 4 + 2 * index
        if entry >= self.vsize:
            return 0
        offset = _u16(self.buf, self.vtable + entry)
        return self.pos + offset if offset else 0

    def scalar(self, index: int, fmt: str, default=0):
        at = self._field(index)
        return struct.unpack_from("<" + fmt, self.buf, at)[0] if at else default

    def _target(self, index: int) -> int:
        at = self._field(index)
        return at + _u32(self.buf, at) if at else 0

    def string(self, index: int) -> Optional[str]:
        at = self._target(index)
        if not at:
            return None
        length = _u32(self.buf, at)
        return self.buf[at + 4 : at + 4 + length].decode("utf-8", "replace")

    def table(self, index: int) -> Optional["_Table"]:
        at = self._target(index)
        return _Table(self.buf, at) if at else None

    def tables(self, index: int) -> List["_Table"]:
        at = self._target(index)
        if not at:
            return []
        count = _u32(self.buf, at)
        return [_Table(self.buf, at + 4 + 4 * i + _u32(self.buf, at + 4 + 4 * i)) for i in range(count)]

    def scalars(self, index: int, fmt: str) -> List:
        at = self._target(index)
        if not at:
            return []
        count = _u32(self.buf, at)
        return list(struct.unpack_from("<%d%s" % (count, fmt), self.buf, at + 4))

    def struct_at(self, index: int, fmt: str):
        at = self._field(index)
        return struct.unpack_from("<" + fmt, self.buf, at) if at else None


def _u16(buf, at):
    return struct.unpack_from("<H", buf, at)[0]


def _u32(buf, at):
    return struct.unpack_from("<I", buf, at)[0]


def _i32(buf, at):
    return struct.unpack_from("<i", buf, at)[0]


# field indices of bmodel.fbs (its `id:` numbers)
MODEL_TYPE, MODEL_VERSION, MODEL_TIME, MODEL_CHIP, MODEL_NET, MODEL_KERNEL = 0, 1, 2, 3, 4, 6
NET_NAME, NET_PARAMETER = 0, 3
PARAM_INPUT, PARAM_OUTPUT, PARAM_CTX_SIZE, PARAM_COEFF, PARAM_DYNAMIC, PARAM_SUBNET, PARAM_CORES = (
    0,
    1,
    3,
    4,
    5,
    12,
    16,
)
TENSOR_NAME, TENSOR_DTYPE, TENSOR_SHAPE, TENSOR_SCALE, TENSOR_ZERO_POINT = 0, 1, 5, 7, 10
COEFF_BINARY = 2


def _tensor(table: _Table) -> TensorInfo:
    shapes = table.tables(TENSOR_SHAPE)
    dims = shapes[0].scalars(0, "Q") if shapes else []
    dtype = table.scalar(TENSOR_DTYPE, "I")
    return TensorInfo(
        name=table.string(TENSOR_NAME) or "",
        dtype=DTYPES.get(dtype, "dtype%d" % dtype),
        shape=[int(d) for d in dims],
        scale=float(table.scalar(TENSOR_SCALE, "f", 1.0)),
        zero_point=int(table.scalar(TENSOR_ZERO_POINT, "i", 0)),
    )


def _stage(table: _Table) -> StageInfo:
    coeff = table.table(PARAM_COEFF)
    binary = coeff.struct_at(COEFF_BINARY, "QQ") if coeff else None
    return StageInfo(
        inputs=[_tensor(t) for t in table.tables(PARAM_INPUT)],
        outputs=[_tensor(t) for t in table.tables(PARAM_OUTPUT)],
        subnets=len(table.tables(PARAM_SUBNET)),
        core_num=int(table.scalar(PARAM_CORES, "I", 0)) or 1,
        coeff_size=int(binary[1]) if binary else 0,
        ctx_size=int(table.scalar(PARAM_CTX_SIZE, "Q", 0)),
    )


def read_bmodel_info(path: str) -> BmodelInfo:
    """Parse the header and flatbuffer of the bmodel at `path` (the binary section is not read).

    Raises:
        BmodelError: not a bmodel (bad magic), truncated (shorter than its header says), or a corrupt
            flatbuffer.
    """
    with open(path, "rb") as src:
        head = src.read(HEADER.size)
        if len(head) < HEADER.size:
            raise BmodelError("%s: not a bmodel (%d bytes, shorter than a bmodel header)" % (path, len(head)))
        magic, header_size, fb_size, binary_size = HEADER.unpack(head)
        if magic != MAGIC:
            raise BmodelError("%s: not a bmodel (magic 0x%08x, expected 0x%08x)" % (path, magic, MAGIC))
        src.seek(0, 2)
        size = src.tell()
        expected = header_size + fb_size + binary_size
        if size < expected:
            raise BmodelError(
                "%s: truncated: %d bytes, its header says %d (header %d + flatbuffer %d + binary %d)"
                % (path, size, expected, header_size, fb_size, binary_size)
            )
        src.seek(header_size)
        buf = src.read(fb_size)
    try:
        model = _Table(buf, _u32(buf, 0))
        nets = []
        for net in model.tables(MODEL_NET):
            stages = [_stage(p) for p in net.tables(NET_PARAMETER)]
            dynamic = any(p.scalar(PARAM_DYNAMIC, "i") for p in net.tables(NET_PARAMETER))
            nets.append(NetInfo(name=net.string(NET_NAME) or "", dynamic=bool(dynamic), stages=stages))
        kernel = model.table(MODEL_KERNEL)
        kernel_binary = kernel.struct_at(1, "QQ") if kernel else None
        return BmodelInfo(
            path=path,
            version=(model.string(MODEL_TYPE) or "") + "." + (model.string(MODEL_VERSION) or ""),
            chip=model.string(MODEL_CHIP) or "",
            time=model.string(MODEL_TIME) or "",
            kernel_module=kernel.string(0) if kernel else None,
            kernel_size=int(kernel_binary[1]) if kernel_binary else 0,
            nets=nets,
            file_size=size,
            expected_size=expected,
        )
    except (struct.error, IndexError, UnicodeDecodeError) as error:
        raise BmodelError("%s: corrupt flatbuffer: %s" % (path, error))


def _shape_text(shape: List[int], dynamic: bool) -> str:
    return "[%s]" % ", ".join(("max:%d" % d) if dynamic else str(d) for d in shape)


def _scale(value: float) -> str:
    return ("%g" % value) if value != int(value) else str(int(value))


def format_info(info: BmodelInfo) -> List[str]:
    """The lines `model_tool --info` prints for the nets (chip, kernel module, per net and stage)."""
    lines = ["bmodel version: %s" % info.version, "chip: %s" % info.chip]
    if info.kernel_module:
        lines += ["kernel_module name: %s" % info.kernel_module, "kernel_module size: %d" % info.kernel_size]
    for index, net in enumerate(info.nets):
        lines.append("net %d: [%s]  %s" % (index, net.name, "dynamic" if net.dynamic else "static"))
        for number, stage in enumerate(net.stages):
            lines.append("stage %d, core num: %d" % (number, stage.core_num))
            if stage.subnets > 1:
                lines.append("subnet number: %d" % stage.subnets)
            for kind, tensors in (("input", stage.inputs), ("output", stage.outputs)):
                # model_tool marks dynamic shapes as max only on a dynamic net's inputs
                dynamic = net.dynamic and kind == "input"
                for t in tensors:
                    lines.append(
                        "%s: %s, %s, %s, scale: %s, zero_point: %d"
                        % (
                            kind,
                            t.name,
                            _shape_text(t.shape, dynamic),
                            t.dtype,
                            _scale(t.scale),
                            t.zero_point,
                        )
                    )
    return lines


def summary(info: BmodelInfo) -> Dict[str, object]:
    """A JSON-able summary: chip, version, and per net its kind, stages and tensors."""
    return {
        "chip": info.chip,
        "version": info.version,
        "nets": [
            {
                "name": net.name,
                "dynamic": net.dynamic,
                "stages": [
                    {
                        "subnets": s.subnets,
                        "inputs": [t._asdict() for t in s.inputs],
                        "outputs": [t._asdict() for t in s.outputs],
                    }
                    for s in net.stages
                ],
            }
            for net in info.nets
        ],
    }
