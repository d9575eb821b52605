"""The content-addressed asset cache.

    <cache>/blobs/sha256/<hex>            verified content, named by its sha256
    <cache>/models/<model>/<path>         relative symlink to the blob (what the manifest calls the file)
    <cache>/partial/<model>/<path>.part   a download in progress (+ `.part.json`: source validator)
    <cache>/corrupt/<model>/<path>.<hex>  a download that failed verification, kept only if asked

A file reaches `blobs/` only by an atomic rename after its size and sha256 matched, so nothing at a final
path is ever partial or unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from provision.errors import ConfigError, DiskFullError

CHUNK = 1 << 20  # 1 MiB reads: hashlib's fast path (~1.5 GB/s, faster than 8 MiB reads)
DISK_MARGIN = 64 << 20  # keep this much free beyond what a download needs
ORIGIN_SUFFIX = ".origin"  # beside a name link: the source label it was downloaded from


@dataclass(frozen=True)
class CachedFile:
    model: str
    path: str
    size: int
    sha256: str
    blob: Path


@dataclass(frozen=True)
class CacheEntry:
    """One blob and the model files that point at it (`assets ls`)."""

    sha256: str
    size: int
    names: tuple[str, ...]  # "<model>/<path>"


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None, limit: int | None = None) -> str:
    """sha256 of a file (or of its first `limit` bytes) with 1 MiB reads; `on_bytes` reports progress."""
    return hash_prefix(path, limit, on_bytes).hexdigest()


def hash_prefix(path: Path, limit: int | None = None, on_bytes: Callable[[int], None] | None = None):
    """A sha256 object fed with the first `limit` bytes of `path` (all when None), for resuming."""
    digest = hashlib.sha256()
    left = limit
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while left is None or left > 0:
            n = f.readinto(buf if left is None or left >= CHUNK else view[:left])
            if not n:
                break
            digest.update(view[:n])
            if left is not None:
                left -= n
            if on_bytes:
                on_bytes(n)
    return digest


def ensure_free(directory: Path, need: int, what: str) -> None:
    """Refuse to start writing `need` bytes where the disk cannot hold them (plus a margin).

    Raises:
        DiskFullError: with how much is needed and free.
    """
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if need > 0 and free < need + DISK_MARGIN:
        raise DiskFullError(
            f"{what} needs {need / 2**20:.1f} MiB (+{DISK_MARGIN >> 20} MiB margin) in {directory}, "
            f"only {free / 2**20:.1f} MiB free",
            hint="free some space, or point the cache elsewhere (SOPHON_FLEET_CACHE or --cache-dir)",
        )


class Cache:
    """The cache under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _inside(self, area: str, *parts: str) -> Path:
        """`<root>/<area>/<parts...>`, refusing anything that would leave `<root>/<area>`."""
        base = self.root / area
        path = base.joinpath(*parts)
        if not os.path.normpath(path).startswith(os.path.normpath(base) + os.sep):
            raise ConfigError(f"{'/'.join(parts)!r} escapes the cache area {base}")
        return path

    def blob_path(self, sha256: str) -> Path:
        return self._inside("blobs", "sha256", sha256)

    def link_path(self, model: str, path: str) -> Path:
        return self._inside("models", model, path)

    def part_path(self, model: str, path: str) -> Path:
        return self._inside("partial", model, path + ".part")

    def lookup(
        self, model: str, path: str, sha256: str | None, origins: Collection[str] = ()
    ) -> CachedFile | None:
        """The cached file for `model/path`: the blob `sha256` names when the entry is pinned; unpinned,
        only the file its name links to *and* that was downloaded from one of the entry's own `origins`
        (source labels). A blob is never served by its file name alone: another manifest of the same model
        name (a simulator's stand-ins, a fork) may have cached different bytes under it."""
        if sha256 is not None:
            blob = self.blob_path(sha256)
            if not blob.is_file():
                return None
        else:
            link = self.link_path(model, path)
            if (
                not link.is_symlink()
                or not link.resolve().is_file()
                or self.origin(model, path) not in origins
            ):
                return None
            blob = link.resolve()
        size = blob.stat().st_size
        return CachedFile(model=model, path=path, size=size, sha256=blob.name, blob=blob)

    def named(self, model: str, path: str) -> CachedFile | None:
        """Whatever the name `model/path` links to, pinned or not: for diagnostics only, never to serve."""
        link = self.link_path(model, path)
        if not link.is_symlink() or not link.resolve().is_file():
            return None
        blob = link.resolve()
        return CachedFile(model=model, path=path, size=blob.stat().st_size, sha256=blob.name, blob=blob)

    def origin(self, model: str, path: str) -> str | None:
        """The source label the file at `model/path` was downloaded from."""
        try:
            return self.link_path(model, path + ORIGIN_SUFFIX).read_text(encoding="utf-8").strip()
        except OSError:
            return None

    def place(self, part: Path, model: str, path: str, sha256: str, origin: str) -> CachedFile:
        """Move a verified `.part` into `blobs/` (atomic rename) and point the model's name at it, noting
        the source it came from (`origin`)."""
        blob = self.blob_path(sha256)
        blob.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "rb") as f:
            os.fsync(f.fileno())
        os.replace(part, blob)
        _fsync_dir(blob.parent)
        meta = part.with_name(part.name + ".json")
        meta.unlink(missing_ok=True)
        self._link(model, path, blob)
        self.link_path(model, path + ORIGIN_SUFFIX).write_text(origin + "\n", encoding="utf-8")
        return CachedFile(model=model, path=path, size=blob.stat().st_size, sha256=sha256, blob=blob)

    def point_name(self, model: str, path: str, blob: Path) -> bool:
        """Make the name `model/path` link to `blob` (the one the pin in force names) when it is missing or
        links elsewhere (pulled under another pin, deleted); True when it had to be repaired."""
        link = self.link_path(model, path)
        if link.is_symlink() and link.resolve() == blob.resolve():
            return False
        self._link(model, path, blob)
        return True

    def _link(self, model: str, path: str, blob: Path) -> None:
        link = self.link_path(model, path)
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.path.relpath(blob, link.parent))
        os.replace(tmp, link)

    def set_aside(self, part: Path, model: str, path: str, sha256: str) -> Path:
        """Keep a corrupt download for inspection, away from every final path."""
        target = self._inside("corrupt", model, f"{path}.{sha256[:12]}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, target)
        return target

    def read_part_meta(self, part: Path) -> dict:
        try:
            return json.loads(part.with_name(part.name + ".json").read_text())
        except (OSError, ValueError):
            return {}

    def write_part_meta(self, part: Path, meta: dict) -> None:
        part.parent.mkdir(parents=True, exist_ok=True)
        part.with_name(part.name + ".json").write_text(json.dumps(meta))

    def entries(self) -> list[CacheEntry]:
        """Every blob with the model files pointing at it, and partial downloads as `<size> .part`."""
        names: dict[str, list[str]] = {}
        for link in self._walk(self.root / "models"):
            if link.is_symlink():
                rel = link.relative_to(self.root / "models").as_posix()
                names.setdefault(link.resolve().name, []).append(rel)
        result = []
        for blob in sorted(self._walk(self.root / "blobs" / "sha256")):
            size = blob.stat().st_size
            result.append(CacheEntry(blob.name, size, tuple(sorted(names.get(blob.name, [])))))
        return result

    def partials(self) -> list[tuple[str, int]]:
        base = self.root / "partial"
        return [
            (p.relative_to(base).as_posix(), p.stat().st_size)
            for p in sorted(self._walk(base))
            if p.name.endswith(".part")
        ]

    @staticmethod
    def _walk(base: Path) -> Iterator[Path]:
        if base.is_dir():
            for dirpath, _dirs, files in os.walk(base):
                for name in files:
                    yield Path(dirpath, name)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
