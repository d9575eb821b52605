"""A small reader and writer of the safetensors format (Hugging Face checkpoints), numpy only.

    8 bytes: header length N (little endian u64) | N bytes: JSON header | raw tensor data

The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets into the data
that follows the header) and may hold "__metadata__". bf16 has no numpy dtype: it is widened to float32
(its bits are the top half of a float32).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from provision.errors import ConfigError

DTYPES: dict[str, type] = {
    "F32": np.float32,
    "F16": np.float16,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
    "I8": np.int8,
    "U8": np.uint8,
}
BF16 = "BF16"
_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


class SafetensorsFile:
    """The tensors of one `.safetensors` file, read on demand (the header is parsed once)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as src:
                raw = src.read(8)
                if len(raw) != 8:
                    raise ConfigError("truncated safetensors header", file=str(self.path))
                (length,) = struct.unpack("<Q", raw)
                size = self.path.stat().st_size
                if length > min(size - 8, 100 << 20):
                    raise ConfigError(f"header length {length} is not plausible", file=str(self.path))
                header = json.loads(src.read(length).decode("utf-8"))
        except (OSError, ValueError) as error:
            raise ConfigError(f"not a safetensors file: {error}", file=str(self.path)) from None
        if not isinstance(header, dict):
            raise ConfigError("safetensors header is not a mapping", file=str(self.path))
        header.pop("__metadata__", None)
        self.data_start = 8 + length
        self.size = size
        self.entries: dict[str, dict] = header

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in self.entries[name]["shape"])

    def read(self, name: str) -> np.ndarray:
        """The tensor `name` as a numpy array (bf16 widened to float32).

        Raises:
            ConfigError: unknown dtype, or offsets outside the file (a truncated download).
        """
        entry = self.entries[name]
        dtype_name = str(entry.get("dtype"))
        begin, end = (int(x) for x in entry["data_offsets"])
        shape = self.shape(name)
        if self.data_start + end > self.size or begin > end:
            raise ConfigError(
                f"{name}: data [{begin}, {end}) lies outside the file ({self.size} bytes): truncated?",
                file=str(self.path),
            )
        if dtype_name != BF16 and dtype_name not in DTYPES:
            raise ConfigError(f"{name}: unsupported dtype {dtype_name!r}", file=str(self.path))
        item = 2 if dtype_name == BF16 else np.dtype(DTYPES[dtype_name]).itemsize
        count = int(np.prod(shape)) if shape else 1
        if end - begin != count * item:
            raise ConfigError(
                f"{name}: {end - begin} bytes do not hold shape {list(shape)} of {dtype_name}",
                file=str(self.path),
            )
        with open(self.path, "rb") as src:
            src.seek(self.data_start + begin)
            raw = src.read(end - begin)
        if dtype_name == BF16:
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            return bits.view(np.float32).reshape(shape)
        return np.frombuffer(raw, dtype=np.dtype(DTYPES[dtype_name]).newbyteorder("<")).reshape(shape)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], bf16: bool = False) -> None:
    """Write `tensors` (float32 ones as bf16 when `bf16`, by truncation-free rounding to nearest even)."""
    header: dict[str, dict] = {}
    blobs = []
    offset = 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        if bf16 and array.dtype == np.float32:
            bits = array.view(np.uint32).astype(np.uint64)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
            raw, dtype_name = rounded.tobytes(), BF16
        else:
            raw, dtype_name = array.astype(array.dtype.newbyteorder("<")).tobytes(), _NAMES[array.dtype]
        header[name] = {
            "dtype": dtype_name,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    part = Path(str(path) + ".part")
    with open(part, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for raw in blobs:
            out.write(raw)
    part.replace(path)
