"""The simulated boot image (`/boot/emmcboot.itb`): a real FIT, as memory_edit's `en_emmcfile` builds it.

    0x0000   the FIT structure (an FDT v17): /images/{kernel-1, ramdisk-1, fdt-1} with data-size,
             data-position and a sha256 hash-1 node each; /configurations/config-1 (the default)
    0x2000   kernel, then ramdisk, then the dtb, each 4-byte aligned (`mkimage -E -p 0x2000`)

The dtb carries what the vendor's dts has and memory_edit rewrites: the /memory banks (ddr12, ddr3, ddr4),
the reserved regions (armfw_mem, arm_mem, smmu_mem, ramoops_mem, vpu_mem, ion_<key>_mem) and the
`bitmain-ion` node (heap_carveout@0 npu, @1 vpp, @2 vpu, each with a memory-region phandle). A heap of 0 MiB
(memory_edit `-vpu 0`) has neither its heap_carveout node nor its ion_<key>_mem region. Kernel and ramdisk
are filler bytes, enough that a partial copy is detected (the hashes fail, like U-Boot refusing to boot).
`dumpimage -l`, `dumpimage -T flat_dt -p 2` and `dtc -I dtb` read these images (tests/unit/test_bootfit.py).

Reading goes through `provision/memory/bootfit.py`, the controller's own parser. This file and that one are
also shipped inside the simulated memory_edit kit (as `bintools/simfit.py` and `bintools/bootfit.py`, run by
the box's Python 3.8), where they play dumpimage/dtc/mkimage: keep both standard-library only and Python 3.8
compatible.
"""

import hashlib
import struct
from typing import List, NamedTuple, Sequence, Tuple

try:
    from provision.memory import bootfit
except ImportError:  # inside the kit on a box: bootfit.py sits beside this file
    import bootfit  # type: ignore[no-redef]

DDR_16GB = (8192, 4096, 4096)  # ddr12, ddr3, ddr4 MiB of a 16 GB BM1684X
NPU_RESERVED_MIB = 577  # armfw 512 + arm 64 + smmu 1 MiB at the start of ddr12: max npu = 8192 - 577 = 7615
MIB = 1 << 20
DATA_POSITION = 0x2000  # `mkimage -p 0x2000`
KERNEL_SIZE = 192 * 1024  # a real Image is ~25 MB and the ramdisk ~10 MB; a little bulk is enough here
RAMDISK_SIZE = 64 * 1024
TIMESTAMP = 1764054951  # 2025-11-25, the SDK build in FACTS.md's bm_version: images are reproducible
VPU_MEM = 128 * MIB  # the VPU firmware region
RAMOOPS = 0x314000000  # ramoops here: memory_edit puts vpu_mem at 512 MiB into ddr3
BANK_BASE = (1 << 32, 3 << 32, 4 << 32)  # ddr12, ddr3, ddr4 physical bases
PHANDLES = {"armfw_mem": 1, "arm_mem": 2, "smmu_mem": 3, "ion_npu_mem": 4, "ion_vpp_mem": 5, "ion_vpu_mem": 6}


class InvalidImage(Exception):
    """The image cannot boot."""


class BootImage(NamedTuple):
    dts: str
    heaps: Tuple[int, int, int]  # npu, vpu, vpp MiB
    ddr: Tuple[int, int, int] = DDR_16GB
    npu_reserved: int = NPU_RESERVED_MIB


# ---------------------------------------------------------------------------------------------- FDT writer

Prop = Tuple[str, bytes]


class Tree(NamedTuple):
    name: str
    props: List[Prop]
    children: List["Tree"]


def cells(*values: int) -> bytes:
    return struct.pack(f">{len(values)}I", *values)


def text(*values: str) -> bytes:
    return b"".join(v.encode() + b"\0" for v in values)


def reg(address: int, size: int) -> Prop:
    """`reg` in a 2/2-cell parent: <addr-hi addr-lo size-hi size-lo>."""
    return ("reg", cells(address >> 32, address & 0xFFFFFFFF, size >> 32, size & 0xFFFFFFFF))


def fdt(root: Tree) -> bytes:
    """The FDT v17 blob of `root` (header, empty reservation map, structure, strings), like `dtc -O dtb`."""
    strings, offsets, body = bytearray(), {}, bytearray()

    def name_offset(name: str) -> int:
        if name not in offsets:
            offsets[name] = len(strings)
            strings.extend(name.encode() + b"\0")
        return offsets[name]

    def emit(node: Tree) -> None:
        body.extend(cells(bootfit.FDT_BEGIN_NODE) + _pad(node.name.encode() + b"\0"))
        for name, value in node.props:
            body.extend(cells(bootfit.FDT_PROP, len(value), name_offset(name)) + _pad(value))
        for child in node.children:
            emit(child)
        body.extend(cells(bootfit.FDT_END_NODE))

    emit(root)
    body.extend(cells(bootfit.FDT_END))
    off_struct = bootfit.HEADER.size + 16  # the reservation map: one empty entry
    off_strings = off_struct + len(body)
    total = off_strings + len(strings)
    header = bootfit.HEADER.pack(
        bootfit.FDT_MAGIC,
        total,
        off_struct,
        off_strings,
        bootfit.HEADER.size,
        17,
        16,
        0,
        len(strings),
        len(body),
    )
    return header + bytes(16) + bytes(body) + bytes(strings)


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


# ---------------------------------------------------------------------------------------------- the dtb


def device_tree(image: BootImage) -> Tree:
    """The dtb of a BM1684X box booting `image`, with the regions where memory_edit v2.12 places them."""
    ddr12, ddr3, ddr4 = (mib * MIB for mib in image.ddr)
    npu, vpu, vpp = (mib * MIB for mib in image.heaps)
    armfw = (image.npu_reserved - 65) * MIB
    regions = [  # (node name, address, size, extra props)
        ("armfw_mem", BANK_BASE[0], armfw, [("no-map", b"")]),
        ("arm_mem", BANK_BASE[0] + armfw, 64 * MIB, [("no-map", b"")]),
        ("smmu_mem", BANK_BASE[0] + armfw + 64 * MIB, MIB, [("no-map", b"")]),
        ("ramoops_mem", RAMOOPS, MIB, [("compatible", text("ramoops"))]),
    ]
    if vpu:
        regions.append(("vpu_mem", BANK_BASE[1] + 512 * MIB, VPU_MEM, [("no-map", b"")]))
    elif ddr4 - vpp - MIB >= VPU_MEM:  # vpu deleted: vpu_mem goes below vpp in ddr4 if it fits
        regions.append(("vpu_mem", BANK_BASE[2] + ddr4 - MIB - vpp - VPU_MEM, VPU_MEM, [("no-map", b"")]))
    else:
        regions.append(("vpu_mem", BANK_BASE[1] + ddr3 - VPU_MEM, VPU_MEM, [("no-map", b"")]))
    heaps = [  # key, address, size (top-aligned in their bank; 1 MiB kept free above vpu, or above vpp)
        ("npu", BANK_BASE[0] + image.npu_reserved * MIB, npu),
        ("vpp", BANK_BASE[2] + ddr4 - vpp - (0 if vpu else MIB), vpp),
        ("vpu", BANK_BASE[1] + ddr3 - MIB - vpu, vpu),
    ]
    for key, address, size in heaps:
        if size:
            props = [("compatible", text(key + "-region"))]
            regions.append((f"ion_{key}_mem", address, size, props))
    reserved = [
        Tree(name, [reg(address, size)] + extra + _phandle(name), [])
        for name, address, size, extra in regions
    ]
    ion = [
        Tree(
            f"heap_carveout@{index}",
            [
                ("compatible", text("bitmain,carveout_" + key)),
                ("memory-region", cells(PHANDLES[f"ion_{key}_mem"])),
            ],
            [],
        )
        for index, (key, _, size) in enumerate(heaps)
        if size
    ]
    tpu_regions = [PHANDLES[n] for n in ("armfw_mem", "arm_mem", "smmu_mem", "ion_npu_mem", "ion_vpp_mem")]
    two = [("#address-cells", cells(2)), ("#size-cells", cells(2))]
    banks = [v for i, size in enumerate((ddr12, ddr3, ddr4)) for v in reg(BANK_BASE[i], size)[1:]]
    return Tree(
        "",
        two
        + [("model", text("Sophon " + bootfit.dts_stem(image.dts))), ("compatible", text("bitmain,bm1684x"))],
        [
            Tree("info", [("file-name", text(image.dts))], []),
            Tree("memory", [("device_type", text("memory")), ("reg", b"".join(banks))], []),
            Tree("reserved-memory", two + [("ranges", b"")], reserved),
            Tree(
                "bmtpu",
                [("compatible", text("bitmain,tpu-1684")), ("memory-region", cells(*tpu_regions))],
                [],
            ),
            Tree(
                "vdec@50070000", [("compatible", text("bitmain,bitmain-vdec")), reg(0x50070000, 0x10000)], []
            ),
            Tree("bitmain-ion", [("compatible", text("bitmain,bitmain-ion"))], ion),
        ],
    )


def _phandle(name: str) -> List[Prop]:
    return [("phandle", cells(PHANDLES[name]))] if name in PHANDLES else []


# ---------------------------------------------------------------------------------------------- the FIT

_FILLER = {}  # type: dict


def filler(size: int, seed: int) -> bytes:
    """Deterministic bytes standing in for the kernel / ramdisk."""
    key = (size, seed)
    if key not in _FILLER:
        _FILLER[key] = bytes((i * 131 + seed + (i >> 8)) & 0xFF for i in range(size))
    return _FILLER[key]


def encode(image: BootImage) -> bytes:
    """The whole emmcboot.itb for `image` (reproducible bytes)."""
    dtb = fdt(device_tree(image))
    stem = bootfit.dts_stem(image.dts)
    payloads = [  # name, props before the data, data
        (
            "kernel-1",
            [("description", text("sophon kernel")), ("type", text("kernel")), ("arch", text("arm64")),
             ("os", text("linux")), ("compression", text("none")), ("load", cells(0, 0x280000)),
             ("entry", cells(0, 0x280000))],
            filler(KERNEL_SIZE, 1),
        ),
        (
            "ramdisk-1",
            [("description", text("sophon ramdisk")), ("type", text("ramdisk")), ("arch", text("arm64")),
             ("os", text("linux")), ("compression", text("none"))],
            filler(RAMDISK_SIZE, 2),
        ),
        (
            "fdt-1",
            [("description", text(stem)), ("type", text("flat_dt")), ("arch", text("arm64")),
             ("compression", text("none"))],
            dtb,
        ),
    ]  # fmt: skip
    images, data, position = [], bytearray(), DATA_POSITION
    for name, props, payload in payloads:
        place = [("data-size", cells(len(payload))), ("data-position", cells(position))]
        digest = [("value", hashlib.sha256(payload).digest()), ("algo", text("sha256"))]
        images.append(Tree(name, place + props, [Tree("hash-1", digest, [])]))
        data.extend(payload if name == payloads[-1][0] else _pad(payload))
        position += len(_pad(payload))
    config = [("description", text(stem)), ("kernel", text("kernel-1")), ("ramdisk", text("ramdisk-1")),
              ("fdt", text("fdt-1"))]  # fmt: skip
    root = Tree(
        "",
        [
            ("timestamp", cells(TIMESTAMP)),
            ("description", text("sophon multi dtb")),
            ("#address-cells", cells(1)),
        ],
        [
            Tree("images", [], images),
            Tree("configurations", [("default", text("config-1"))], [Tree("config-1", config, [])]),
        ],
    )
    structure = fdt(root)
    assert len(structure) <= DATA_POSITION, "FIT structure overlaps its external data"
    return structure + bytes(DATA_POSITION - len(structure)) + bytes(data)


def decode(raw: bytes) -> BootImage:
    """What an image boots with, read like U-Boot does (every image of the default configuration verified
    against its hash); InvalidImage when it cannot boot."""
    try:
        fit = bootfit.read_fit(lambda offset, size: raw[offset : offset + size], len(raw), len(raw))
        loaded = bootfit.boot_images(fit)
        for payload in loaded:
            bootfit.check_hashes(payload, raw[payload.offset : payload.offset + payload.size])
        dtb = bootfit.pick_fdt(fit)
        board = bootfit.read_board(raw[dtb.offset : dtb.offset + dtb.size])
    except bootfit.FormatError as exc:
        raise InvalidImage(str(exc)) from exc
    return BootImage(
        board.file_name or dtb.description,
        tuple(board.heaps[k][1] // MIB if k in board.heaps else 0 for k in ("npu", "vpu", "vpp")),
        _ddr_mib(board.ddr),
        sum(board.reserved.get(n, (0, 0))[1] for n in ("armfw_mem", "arm_mem", "smmu_mem")) // MIB,
    )


def _ddr_mib(banks: Sequence[Tuple[int, int]]) -> Tuple[int, int, int]:
    """ddr12, ddr3, ddr4 MiB, as memory_edit reads them (12 cells: 3 banks; 16 cells: ddr1 + ddr2 first)."""
    sizes = [size // MIB for _, size in banks]
    if len(sizes) == 4:
        sizes = [sizes[0] + sizes[1]] + sizes[2:]
    if len(sizes) != 3:
        raise InvalidImage(f"cannot support ddr info: {len(banks)} banks")
    return sizes[0], sizes[1], sizes[2]


def multi_its(dts: str) -> str:
    """A multi.its like the one beside the image, listing the kernel, ramdisk and the box's dtb."""
    stem = bootfit.dts_stem(dts)
    return (
        '/dts-v1/;\n/ {\n\tdescription = "sophon multi dtb";\n\t#address-cells = <1>;\n\timages {\n'
        '\t\tkernel-1 {\n\t\t\tdescription = "sophon kernel";\n\t\t\tdata = /incbin/("./Image");\n'
        '\t\t\ttype = "kernel";\n\t\t\thash-1 { algo = "sha256"; };\n\t\t};\n'
        '\t\tramdisk-1 {\n\t\t\tdescription = "sophon ramdisk";\n\t\t\tdata = /incbin/("./ramdisk.gz");\n'
        '\t\t\ttype = "ramdisk";\n\t\t\thash-1 { algo = "sha256"; };\n\t\t};\n'
        '\t\tfdt-1 {\n\t\t\tdescription = "' + stem + '";\n\t\t\tdata = /incbin/("./' + stem + '.dtb");\n'
        '\t\t\ttype = "flat_dt";\n\t\t\thash-1 { algo = "sha256"; };\n\t\t};\n\t};\n'
        '\tconfigurations {\n\t\tdefault = "config-1";\n\t\tconfig-1 { description = "' + stem + '"; '
        'kernel = "kernel-1"; ramdisk = "ramdisk-1"; fdt = "fdt-1"; };\n\t};\n};\n'
    )
