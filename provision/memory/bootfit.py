"""Reading a BM1684X boot image: the FIT around it and the device tree that decides the ion heaps.

A box's /boot/emmcboot.itb is a FIT (U-Boot's Flattened Image Tree): a flattened device tree (FDT v17) whose
`/images` node lists the kernel, the ramdisk and the box's dtb(s), each with `hash-N` nodes (`algo`,
`value`), and whose `/configurations` say which ones boot together. memory_edit builds it with
`mkimage -p 0x2000 -f multi.its`, so the payloads may sit after the FIT structure (`data-position`: absolute
offset; `data-offset`: from the end of the 4-byte aligned structure) or inside it (`data`); all three are
read.

The heap layout an image boots with is in its dtb, where memory_edit writes it:
    /bitmain-ion/heap_carveout@N    compatible "bitmain,carveout_<npu|vpp|vpu>", memory-region = <phandle>
    /reserved-memory/ion_<key>_mem  compatible "<key>-region", reg = <addr-hi addr-lo size-hi size-lo>
A heap memory_edit deleted (`-vpu 0`) has no heap_carveout node, so the kernel registers no such heap.

Everything here is pure and bounded: bytes come from a `read(offset, length)` callable (a bytes object, or
ranged reads from a box), values over `INLINE_VALUE` bytes are located but never read while walking the
tree, and every count, depth, offset and size is checked before use, so a hostile image ends in FormatError
after a bounded amount of reading. Standard library only and Python 3.8: the simulated memory_edit kit ships
this file too (`bintools/bootfit.py`).
"""

import hashlib
import struct
import zlib
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

FDT_MAGIC = 0xD00DFEED
FDT_BEGIN_NODE, FDT_END_NODE, FDT_PROP, FDT_NOP, FDT_END = 1, 2, 3, 4, 9
# magic, totalsize, off_dt_struct, off_dt_strings, off_mem_rsvmap, version, last_comp_version,
# boot_cpuid_phys, size_dt_strings, size_dt_struct
HEADER = struct.Struct(">10I")
MAX_NODES = 4096
MAX_DEPTH = 32
MAX_NAME = 256
MAX_STRINGS = 64 * 1024
INLINE_VALUE = 4096  # larger property values (payloads embedded in a FIT) are located, not read
MAX_DTB = 1 << 20  # a BM1684X dtb is ~60 KiB
MIB = 1 << 20
HEAP_KEYS = ("npu", "vpp", "vpu")  # the order of heap_carveout@0, @1, @2

Read = Callable[[int, int], bytes]


class FormatError(ValueError):
    """The bytes are no valid FDT/FIT/boot image, or they break one of this module's limits."""


class Prop(NamedTuple):
    offset: int  # of the value, from the start of what `read` reads
    size: int
    value: Optional[bytes]  # None when larger than INLINE_VALUE (not read)


class Node:
    """One device tree node: its properties (by name) and child nodes (in order)."""

    __slots__ = ("name", "props", "children")

    def __init__(self, name: str) -> None:
        self.name = name
        self.props = {}  # type: Dict[str, Prop]
        self.children = []  # type: List[Node]

    def child(self, name: str) -> "Optional[Node]":
        return next((c for c in self.children if c.name == name), None)

    def raw(self, prop: str) -> Optional[bytes]:
        found = self.props.get(prop)
        return found.value if found is not None else None

    def strings(self, prop: str) -> List[str]:
        """A string-list property (`compatible`), [] when absent."""
        value = self.raw(prop)
        if not value:
            return []
        try:
            return value.rstrip(b"\0").decode("ascii").split("\0")
        except UnicodeDecodeError:
            raise FormatError(f"{self.name}: {prop} is not text") from None

    def text(self, prop: str) -> Optional[str]:
        values = self.strings(prop)
        return values[0] if values else None

    def cells(self, prop: str) -> Optional[Tuple[int, ...]]:
        value = self.raw(prop)
        if value is None:
            return None
        if len(value) % 4:
            raise FormatError(f"{self.name}: {prop} is not a list of 32-bit cells")
        return struct.unpack(f">{len(value) // 4}I", value)

    def walk(self) -> "List[Node]":
        """This node and every node below it (depth first)."""
        found, todo = [], [self]  # type: List[Node], List[Node]
        while todo:
            node = todo.pop()
            found.append(node)
            todo.extend(reversed(node.children))
        return found


class Header(NamedTuple):
    totalsize: int
    off_struct: int
    size_struct: int
    off_strings: int
    size_strings: int


def read_header(read: Read, base: int, limit: int) -> Header:
    """The FDT header at `base`, checked: v17, every block inside `totalsize`, `totalsize` <= `limit`."""
    (magic, total, off_struct, off_strings, _, version, last_comp, _, size_strings, size_struct) = (
        HEADER.unpack(_exact(read, base, HEADER.size))
    )
    if magic != FDT_MAGIC:
        raise FormatError(f"not a flattened device tree (magic 0x{magic:08x})")
    if version < 17 or last_comp > 17:
        raise FormatError(f"FDT version {version} (last compatible {last_comp}) is not v17")
    if not HEADER.size <= total <= limit:
        raise FormatError(f"FDT size {total} is outside 40..{limit} bytes")
    for name, off, size in (("structure", off_struct, size_struct), ("strings", off_strings, size_strings)):
        if off < HEADER.size or off + size > total:
            raise FormatError(f"FDT {name} block {off}+{size} lies outside its {total} bytes")
    if off_struct % 4 or size_struct % 4:
        raise FormatError("FDT structure block is not 4-byte aligned")
    if size_strings > MAX_STRINGS:
        raise FormatError(f"FDT strings block of {size_strings} bytes (more than {MAX_STRINGS})")
    return Header(total, off_struct, size_struct, off_strings, size_strings)


def read_tree(read: Read, base: int = 0, limit: int = MAX_DTB) -> Tuple[Node, Header]:
    """The tree of the FDT at `base` (at most `limit` bytes), and its header. Raises FormatError."""
    header = read_header(read, base, limit)
    strings = _exact(read, base + header.off_strings, header.size_strings)
    pos, end = base + header.off_struct, base + header.off_struct + header.size_struct
    stack = []  # type: List[Node]
    root = None  # type: Optional[Node]
    count = 0
    while True:
        if pos + 4 > end:
            raise FormatError("FDT structure block ends without FDT_END")
        (token,) = struct.unpack(">I", _exact(read, pos, 4))
        pos += 4
        if token == FDT_BEGIN_NODE:
            name, pos = _node_name(read, pos, end)
            count += 1
            if count > MAX_NODES or len(stack) >= MAX_DEPTH:
                raise FormatError(f"FDT has more than {MAX_NODES} nodes or {MAX_DEPTH} levels")
            node = Node(name)
            if stack:
                stack[-1].children.append(node)
            elif root is None and name == "":
                root = node
            else:
                raise FormatError("FDT has a second root node or a named root")
            stack.append(node)
        elif token == FDT_END_NODE:
            if not stack:
                raise FormatError("FDT_END_NODE without a node")
            stack.pop()
        elif token == FDT_PROP:
            if not stack:
                raise FormatError("a property outside every node")
            size, name_off = struct.unpack(">II", _exact(read, pos, 8))
            pos += 8
            if size > end - pos:
                raise FormatError(f"property of {size} bytes runs past the structure block")
            name = _string_at(strings, name_off)
            value = _exact(read, pos, size) if size <= INLINE_VALUE else None
            stack[-1].props[name] = Prop(pos, size, value)
            pos += (size + 3) & ~3
        elif token == FDT_NOP:
            continue
        elif token == FDT_END:
            if stack or root is None:
                raise FormatError("FDT ends inside a node")
            return root, header
        else:
            raise FormatError(f"unknown FDT token 0x{token:x}")


# ---------------------------------------------------------------------------------------------- FIT


class Payload(NamedTuple):
    """One image of a FIT (`/images/<name>`), located in the file."""

    name: str
    type: str
    description: str
    offset: int
    size: int
    hashes: Tuple[Tuple[str, bytes], ...]  # (algo, value) of each hash-N node


class Fit(NamedTuple):
    description: str
    images: Dict[str, Payload]
    default: Optional[str]  # the default configuration's name
    configurations: Dict[str, Dict[str, List[str]]]  # name -> {"kernel": [...], "fdt": [...], ...}


def read_fit(read: Read, file_size: int, limit: int) -> Fit:
    """The FIT structure at the start of a file of `file_size` bytes (structure at most `limit` bytes), with
    every payload located inside the file. Raises FormatError."""
    root, header = read_tree(read, 0, min(limit, file_size))
    images = root.child("images")
    if images is None or not images.children:
        raise FormatError("not a FIT: no /images node")
    found = {}  # type: Dict[str, Payload]
    for node in images.children:
        offset, size = _payload_place(node, header.totalsize)
        if offset + size > file_size:
            raise FormatError(
                f"image {node.name}: data at {offset}+{size} lies past the end of the file "
                f"({file_size} bytes): truncated?"
            )
        hashes = tuple(
            (h.text("algo") or "", h.raw("value") or b"") for h in node.children if h.name.startswith("hash")
        )
        found[node.name] = Payload(
            node.name, node.text("type") or "", node.text("description") or "", offset, size, hashes
        )
    configurations = {}  # type: Dict[str, Dict[str, List[str]]]
    confs = root.child("configurations")
    default = None
    if confs is not None:
        default = confs.text("default")
        for conf in confs.children:
            configurations[conf.name] = {p: conf.strings(p) for p in ("kernel", "ramdisk", "fdt")}
    return Fit(root.text("description") or "", found, default, configurations)


def boot_images(fit: Fit) -> List[Payload]:
    """The images the default configuration boots (what U-Boot loads and verifies), kernel first."""
    conf = fit.configurations.get(fit.default or "")
    if conf is None:
        raise FormatError(f"FIT has no default configuration {fit.default!r}")
    names = conf["kernel"][:1] + conf["ramdisk"][:1] + conf["fdt"][:1]
    if not conf["kernel"]:
        raise FormatError(f"configuration {fit.default} names no kernel")
    missing = [n for n in names if n not in fit.images]
    if missing:
        raise FormatError(f"configuration {fit.default} names missing images {missing}")
    return [fit.images[n] for n in names]


def pick_fdt(fit: Fit, dts: Optional[str] = None) -> Payload:
    """The box's dtb: the one whose description or name is `dts` (without .dtb/.dts) when given and found,
    else the default configuration's, else the only one."""
    fdts = [p for p in fit.images.values() if p.type == "flat_dt"]
    if not fdts:
        raise FormatError("FIT holds no device tree (no image of type flat_dt)")
    stem = dts_stem(dts) if dts else None
    for payload in fdts:
        if stem is not None and stem in (dts_stem(payload.description), dts_stem(payload.name)):
            return payload
    conf = fit.configurations.get(fit.default or "")
    if conf is not None and conf["fdt"] and conf["fdt"][0] in fit.images:
        return fit.images[conf["fdt"][0]]
    if len(fdts) == 1:
        return fdts[0]
    raise FormatError(f"FIT holds {len(fdts)} device trees and no default configuration picks one")


def check_hashes(payload: Payload, data: bytes) -> None:
    """Like U-Boot before it boots an image: every hash node must match. Raises FormatError."""
    for algo, value in payload.hashes:
        if algo == "crc32":
            got = struct.pack(">I", zlib.crc32(data) & 0xFFFFFFFF)
        elif algo in ("sha1", "sha256", "sha384", "sha512", "md5"):
            got = hashlib.new(algo, data).digest()
        else:
            raise FormatError(f"image {payload.name}: unsupported hash algorithm {algo!r}")
        if got != value:
            raise FormatError(f"image {payload.name}: {algo} mismatch (corrupt or truncated)")


def dts_stem(name: str) -> str:
    """`bm1684x_se7_v1.dtb` -> `bm1684x_se7_v1` (also .dts)."""
    for suffix in (".dtb", ".dts"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


# ---------------------------------------------------------------------------------------------- the dtb


class BoardTree(NamedTuple):
    """What a BM1684X dtb says about memory (bytes)."""

    file_name: Optional[str]  # /info/file-name, e.g. bm1684x_se7_v1.dtb
    ddr: Tuple[Tuple[int, int], ...]  # (address, size) of each /memory bank
    reserved: Dict[str, Tuple[int, int]]  # /reserved-memory node name -> (address, size)
    heaps: Dict[str, Tuple[int, int]]  # ion heap key -> (address, size); a deleted heap is absent


def read_board(dtb: bytes) -> BoardTree:
    """Parse a BM1684X dtb (bytes). Raises FormatError naming the node or property at fault."""
    root, _ = read_tree(_reader(dtb), 0, min(len(dtb), MAX_DTB))
    info = root.child("info")
    ddr = tuple(
        bank
        for node in root.children
        if node.text("device_type") == "memory" or node.name.split("@")[0] == "memory"
        for bank in _reg(node, root)
    )
    if not ddr:
        raise FormatError("dtb has no /memory banks")
    reserved = {}  # type: Dict[str, Tuple[int, int]]
    pool = root.child("reserved-memory") or Node("reserved-memory")
    for node in pool.children:
        regs = _reg(node, pool)
        if regs:
            reserved[node.name] = regs[0]
    return BoardTree(
        info.text("file-name") if info is not None else None, ddr, reserved, _ion_heaps(root, ddr)
    )


def _ion_heaps(root: Node, ddr: Tuple[Tuple[int, int], ...]) -> Dict[str, Tuple[int, int]]:
    """The heaps the ion driver registers: every enabled `bitmain,carveout_<key>` child of the
    `bitmain,bitmain-ion` node, sized by the reserved-memory node its memory-region points to."""
    ion = next((n for n in root.children if "bitmain,bitmain-ion" in n.strings("compatible")), None)
    if ion is None:
        raise FormatError("dtb has no bitmain-ion node (compatible bitmain,bitmain-ion)")
    phandles = _phandles(root)
    parents = {id(child): node for node in root.walk() for child in node.children}
    heaps = {}  # type: Dict[str, Tuple[int, int]]
    for node in ion.children:
        if (node.text("status") or "okay") not in ("okay", "ok"):
            continue
        keys = [c.split("_", 1)[1] for c in node.strings("compatible") if c.startswith("bitmain,carveout_")]
        if not keys or keys[0] not in HEAP_KEYS:
            continue
        key = keys[0]
        if key in heaps:
            raise FormatError(f"bitmain-ion has two {key} heaps")
        handles = node.cells("memory-region")
        if not handles:
            raise FormatError(f"bitmain-ion/{node.name}: no memory-region")
        region = phandles.get(handles[0])
        if region is None:
            raise FormatError(f"bitmain-ion/{node.name}: memory-region <0x{handles[0]:x}> names no node")
        regs = _reg(region, parents.get(id(region), root))
        if not regs or regs[0][1] == 0:
            raise FormatError(f"{region.name} (the {key} heap) has no size")
        address, size = regs[0]
        if not any(start <= address and address + size <= start + length for start, length in ddr):
            raise FormatError(
                f"{region.name} (the {key} heap): 0x{address:x}+0x{size:x} is not inside a DDR bank"
            )
        heaps[key] = regs[0]
    return heaps


def _phandles(root: Node) -> Dict[int, Node]:
    found = {}  # type: Dict[int, Node]
    for node in root.walk():
        for prop in ("phandle", "linux,phandle"):
            cells = node.cells(prop)
            if cells:
                if cells[0] in found and found[cells[0]] is not node:
                    raise FormatError(f"phandle 0x{cells[0]:x} is used twice")
                found[cells[0]] = node
    return found


def _reg(node: Node, parent: Node) -> List[Tuple[int, int]]:
    """`reg` as (address, size) pairs, by the parent's #address-cells / #size-cells (default 2 / 1)."""
    cells = node.cells("reg")
    if cells is None:
        return []
    ac = (parent.cells("#address-cells") or (2,))[0]
    sc = (parent.cells("#size-cells") or (1,))[0]
    if not (1 <= ac <= 2 and 1 <= sc <= 2) or len(cells) % (ac + sc):
        raise FormatError(
            f"{node.name}: reg of {len(cells)} cells does not fit #address-cells {ac} / #size-cells {sc}"
        )
    pairs = []
    for i in range(0, len(cells), ac + sc):
        pairs.append((_number(cells[i : i + ac]), _number(cells[i + ac : i + ac + sc])))
    return pairs


def _number(cells: Tuple[int, ...]) -> int:
    value = 0
    for cell in cells:
        value = (value << 32) | cell
    return value


# ---------------------------------------------------------------------------------------------- bytes


def _reader(data: bytes) -> Read:
    def read(offset: int, length: int) -> bytes:
        return data[offset : offset + length]

    return read


def _exact(read: Read, offset: int, length: int) -> bytes:
    chunk = read(offset, length)
    if len(chunk) != length:
        raise FormatError(f"truncated: {length} bytes wanted at offset {offset}, {len(chunk)} there")
    return chunk


def _node_name(read: Read, pos: int, end: int) -> Tuple[str, int]:
    chunk = _exact(read, pos, min(MAX_NAME + 1, end - pos))
    nul = chunk.find(b"\0")
    if nul < 0:
        raise FormatError(f"node name at offset {pos} is longer than {MAX_NAME} bytes")
    try:
        name = chunk[:nul].decode("ascii")
    except UnicodeDecodeError:
        raise FormatError(f"node name at offset {pos} is not text") from None
    return name, pos + ((nul + 1 + 3) & ~3)


def _string_at(strings: bytes, offset: int) -> str:
    end = strings.find(b"\0", offset)
    if offset >= len(strings) or end < 0 or end - offset > MAX_NAME:
        raise FormatError(f"property name offset {offset} is outside the strings block")
    try:
        return strings[offset:end].decode("ascii")
    except UnicodeDecodeError:
        raise FormatError(f"property name at {offset} is not text") from None


def _payload_place(node: Node, fit_size: int) -> Tuple[int, int]:
    """(offset in the file, size) of an image's data, as U-Boot finds it."""
    position, offset, size = node.cells("data-position"), node.cells("data-offset"), node.cells("data-size")
    if position is not None or offset is not None:
        if not size or len(size) != 1 or len(position or offset or ()) != 1:
            raise FormatError(f"image {node.name}: external data without one-cell data-size")
        if position is not None:
            return position[0], size[0]
        assert offset is not None
        return ((fit_size + 3) & ~3) + offset[0], size[0]
    embedded = node.props.get("data")
    if embedded is None:
        raise FormatError(f"image {node.name}: no data, data-position or data-offset")
    return embedded.offset, embedded.size
