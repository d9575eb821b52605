"""The stand-in `.bmodel` container read by the emulated `sophon.sail` and written by `sim/tinyglm.py`.

A real bmodel is a flatbuffer of compiled TPU code; the emulator's stand-in is its own simple container
(Python 3.8, numpy only):

    MAGIC (16 bytes) | header length (8 bytes, little endian) | JSON header | npz payload | zero padding

The JSON header names the model kind, its config and every graph with its input/output names, shapes and
dtypes (the same names, scaled shapes and dtypes as the real ChatGLM4 bmodel); the npz payload holds the
weights. `payload_bytes` in the header bounds the payload, so a file padded with zeros to any size (for
download/push tests with realistic sizes) still loads, and reading never touches the padding.
"""

from __future__ import annotations

import io
import json
import os
import struct
from typing import Any, Dict, Tuple

import numpy as np

MAGIC = b"SOPHON-SIM-BMDL\n"
REAL_BMODEL_MAGIC = b"\xee\xaa\x55\xff"  # 0xFF55AAEE little endian: the header of a compiled bmodel
CHIP = "BM1684X"
FORMAT_VERSION = 1
_LENGTH = struct.Struct("<Q")


class BmodelFormatError(RuntimeError):
    """The file is not a loadable stand-in bmodel; the message names the file and what is wrong."""


def write_bmodel(path: str, header: Dict[str, Any], arrays: Dict[str, np.ndarray], pad_to: int = 0) -> int:
    """Write `header` + `arrays` to `path` (atomically via a `.part` file); return the file size.

    `pad_to` > 0 appends zeros up to that many bytes; it must not be smaller than the unpadded file.
    """
    payload = io.BytesIO()
    np.savez(payload, **arrays)
    payload_bytes = payload.getvalue()
    full_header = dict(header)
    full_header["format"] = FORMAT_VERSION
    full_header["payload_bytes"] = len(payload_bytes)
    header_bytes = json.dumps(full_header, sort_keys=True).encode("utf-8")
    size = len(MAGIC) + _LENGTH.size + len(header_bytes) + len(payload_bytes)
    if pad_to and pad_to < size:
        raise ValueError("%s: cannot pad to %d bytes, the model alone needs %d" % (path, pad_to, size))
    part = path + ".part"
    with open(part, "wb") as out:
        out.write(MAGIC)
        out.write(_LENGTH.pack(len(header_bytes)))
        out.write(header_bytes)
        out.write(payload_bytes)
        if pad_to > size:
            out.truncate(pad_to)
    os.replace(part, path)
    return max(size, pad_to)


def read_header(path: str) -> Tuple[Dict[str, Any], int]:
    """Return (header, payload offset) of the stand-in bmodel at `path`.

    Raises:
        BmodelFormatError: missing file, wrong magic, or a truncated/corrupt header.
    """
    try:
        with open(path, "rb") as src:
            magic = src.read(len(MAGIC))
            if magic[:4] == REAL_BMODEL_MAGIC:
                raise BmodelFormatError(
                    "%s: a bmodel compiled by tpu-mlir; the numpy emulator runs the simulator's stand-ins "
                    "(run compiled bmodels with the vendor runtime: sim up --engine cmodel)" % path
                )
            if magic != MAGIC:
                raise BmodelFormatError("%s: not a stand-in bmodel (bad magic %r)" % (path, magic[:8]))
            raw_length = src.read(_LENGTH.size)
            if len(raw_length) != _LENGTH.size:
                raise BmodelFormatError("%s: truncated header" % path)
            (length,) = _LENGTH.unpack(raw_length)
            raw_header = src.read(length)
    except OSError as error:
        raise BmodelFormatError("%s: cannot read bmodel: %s" % (path, error))
    if len(raw_header) != length:
        raise BmodelFormatError("%s: truncated header" % path)
    try:
        header = json.loads(raw_header.decode("utf-8"))
    except ValueError as error:
        raise BmodelFormatError("%s: corrupt header: %s" % (path, error))
    if header.get("format") != FORMAT_VERSION:
        raise BmodelFormatError("%s: unsupported format %r" % (path, header.get("format")))
    if header.get("chip", CHIP) != CHIP:
        raise BmodelFormatError(
            "%s: runtime arch[%s] is not the same with bmodel arch[%s]" % (path, CHIP, header.get("chip"))
        )
    return header, len(MAGIC) + _LENGTH.size + length


def read_bmodel(path: str) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """Return (header, weight arrays) of the stand-in bmodel at `path`, reading only the payload.

    Raises:
        BmodelFormatError: the file is truncated or its payload is not a valid npz.
    """
    header, offset = read_header(path)
    length = int(header["payload_bytes"])
    with open(path, "rb") as src:
        src.seek(offset)
        payload = src.read(length)
    if len(payload) != length:
        raise BmodelFormatError("%s: truncated payload (%d of %d bytes)" % (path, len(payload), length))
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, KeyError) as error:
        raise BmodelFormatError("%s: corrupt payload: %s" % (path, error))
    return header, arrays
