"""The simulated boot image (`/boot/emmcboot.itb`): which heap layout the box boots with.

A real emmcboot.itb is a FIT image whose device trees carry the ddr banks, the reserved regions and the ion
heap sizes. The stand-in keeps what matters to the fleet tool — dts name, ddr sizes, the npu reserve and the
heap sizes — behind a magic and a sha256, so a truncated or corrupted image is detected at boot and leaves
the box dark, as a real box would be.

This file is also shipped inside the simulated memory_edit kit (as `bintools/simfit.py`, run by the box's
Python 3.8), where it plays dumpimage/mkimage: keep it standard-library only and Python 3.8 compatible.
"""

import hashlib
import json
from typing import NamedTuple, Tuple

MAGIC = b"SIMFIT1\n"
PADDING = 64 * 1024  # real images are ~40 MB; a little bulk makes partial copies detectable
DDR_16GB = (8192, 4096, 4096)  # ddr12, ddr3, ddr4 MiB of a 16 GB BM1684X
NPU_RESERVED_MIB = 577  # armfw + arm + smmu regions in ddr12 on the 16 GB box: max npu = 8192 - 577 = 7615


class InvalidImage(Exception):
    """The image cannot boot."""


class BootImage(NamedTuple):
    dts: str
    heaps: Tuple[int, int, int]  # npu, vpu, vpp MiB
    ddr: Tuple[int, int, int] = DDR_16GB
    npu_reserved: int = NPU_RESERVED_MIB


def encode(image: BootImage) -> bytes:
    meta = {
        "dts": image.dts,
        "heaps": list(image.heaps),
        "ddr": list(image.ddr),
        "npu_reserved": image.npu_reserved,
    }
    payload = json.dumps(meta, sort_keys=True).encode()
    body = len(payload).to_bytes(4, "big") + payload + bytes(i % 251 for i in range(PADDING))
    return MAGIC + body + hashlib.sha256(body).digest()


def decode(raw: bytes) -> BootImage:
    """What an image boots with; InvalidImage when it is corrupt."""
    if not raw.startswith(MAGIC) or len(raw) < len(MAGIC) + 4 + 32:
        raise InvalidImage("bad magic or truncated")
    body, digest = raw[len(MAGIC) : -32], raw[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise InvalidImage("checksum mismatch")
    size = int.from_bytes(body[:4], "big")
    try:
        meta = json.loads(body[4 : 4 + size].decode())
        return BootImage(
            str(meta["dts"]),
            tuple(int(v) for v in meta["heaps"]),
            tuple(int(v) for v in meta["ddr"]),
            int(meta["npu_reserved"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidImage(f"bad payload: {exc}") from exc


def multi_its(dts: str) -> str:
    """A multi.its like the real one, listing the kernel, ramdisk and the box's dtb."""
    return (
        '/dts-v1/;\n/ {\n\tdescription = "Sophon BM1684X multi dtb";\n\timages {\n'
        '\t\tkernel-1 { data = /incbin/("./Image"); };\n'
        '\t\tramdisk-1 { data = /incbin/("./ramdisk.gz"); };\n'
        '\t\tfdt-1 { description = "' + dts + '"; data = /incbin/("./' + dts + '"); };\n'
        "\t};\n};\n"
    )
