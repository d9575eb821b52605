"""The simulated boot image (`/boot/emmcboot.itb`): which heap layout the box boots with.

A real emmcboot.itb is a FIT image whose device trees carry the ion heap sizes. The stand-in keeps the part
that matters to the fleet tool: the dts name and heap sizes, behind a magic and a sha256, so a truncated or
corrupted image is detected at boot and leaves the box dark, as a real box would be.
"""

from __future__ import annotations

import hashlib
import json

from sim.profiles import Heaps

MAGIC = b"SIMFIT1\n"
PADDING = 64 * 1024  # real images are ~40 MB; a little bulk makes partial copies detectable


class InvalidImage(Exception):
    """The image cannot boot."""


def encode(heaps: Heaps, dts: str) -> bytes:
    payload = json.dumps({"dts": dts, "heaps": [heaps.npu, heaps.vpu, heaps.vpp]}, sort_keys=True).encode()
    body = len(payload).to_bytes(4, "big") + payload + bytes(i % 251 for i in range(PADDING))
    return MAGIC + body + hashlib.sha256(body).digest()


def decode(image: bytes) -> tuple[Heaps, str]:
    """The heaps and dts an image boots with; InvalidImage when it is corrupt."""
    if not image.startswith(MAGIC) or len(image) < len(MAGIC) + 4 + 32:
        raise InvalidImage("bad magic or truncated")
    body, digest = image[len(MAGIC) : -32], image[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise InvalidImage("checksum mismatch")
    size = int.from_bytes(body[:4], "big")
    try:
        meta = json.loads(body[4 : 4 + size])
        return Heaps(*(int(v) for v in meta["heaps"])), str(meta["dts"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidImage(f"bad payload: {exc}") from exc


def multi_its(dts: str) -> str:
    """A multi.its like the real one, listing the kernel, ramdisk and the box's dtb."""
    return (
        '/dts-v1/;\n/ {\n\tdescription = "Sophon BM1684X multi dtb";\n\timages {\n'
        '\t\tkernel-1 { data = /incbin/("./Image"); };\n'
        '\t\tramdisk-1 { data = /incbin/("./ramdisk.gz"); };\n'
        f'\t\tfdt-1 {{ description = "{dts}"; data = /incbin/("./{dts}"); }};\n'
        "\t};\n};\n"
    )
