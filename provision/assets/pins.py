"""The pins file: size and sha256 of every file of a model, pinned after its first verified download.

It lives in the user's config dir, one per manifest (`<home>/pins/<model>-<key>.yaml`, the key naming the
manifest's path), or where `--pins PATH` says; it may be committed and shared that way. It is never written
beside the manifest, which may sit in an installed package or a source tree. Every later download and every
box is checked against it; a manifest that pins a different value than the pins file is refused.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from provision.errors import ConfigError, IntegrityError
from provision.manifest import SHA256, AssetFile, Manifest, Pinned
from provision.settings import load_settings
from provision.yamlfile import load_yaml

HEADER = """\
# sophon-fleet lock for {model}: size and sha256 of every file, written after a verified download or by
# `sophon-fleet assets pin`. Commit it to share it: every download and every box is checked against it.
"""


@dataclass(frozen=True)
class PinEntry:
    path: str
    size: int
    sha256: str

    @property
    def pinned(self) -> Pinned:
        return Pinned(size=self.size, sha256=self.sha256)


@dataclass
class Pins:
    """The pinned files of one model; `save()` writes it atomically."""

    model: str
    path: Path
    entries: dict[str, PinEntry] = field(default_factory=dict)

    def expected(self, file: AssetFile) -> Pinned:
        """What `file` must be: the manifest's pins merged with the lock's.

        Raises:
            ConfigError: the manifest and the lock pin different values for the file.
        """
        entry = self.entries.get(file.id)
        mine = file.pinned
        if entry is None:
            return mine
        for what, ours, theirs in (("size", mine.size, entry.size), ("sha256", mine.sha256, entry.sha256)):
            if ours is not None and ours != theirs:
                raise ConfigError(
                    f"{file.id}: the manifest pins {what} {ours} but the lock has {theirs}",
                    file=str(self.path),
                    key=f"files.{file.id}.{what}",
                    hint="fix the manifest, or delete the entry from the lock and run `assets pin` again",
                )
        return Pinned(size=entry.size, sha256=entry.sha256)

    def check(self, file: AssetFile, size: int, sha256: str) -> None:
        """Refuse a file whose size or sha256 differs from what is pinned.

        Raises:
            IntegrityError: size or sha256 differs from the manifest or the lock.
        """
        want = self.expected(file)
        if want.size is not None and size != want.size:
            raise IntegrityError(
                f"{file.path}: size {size} does not match the pinned {want.size} ({self.path.name})"
            )
        if want.sha256 is not None and sha256 != want.sha256:
            raise IntegrityError(
                f"{file.path}: sha256 {sha256[:16]}… does not match the pinned {want.sha256[:16]}… "
                f"({self.path.name})",
                hint="the file differs from the one pinned; if the vendor replaced it on purpose, "
                "delete its lock entry and run `assets pin`",
            )

    def record(self, file: AssetFile, size: int, sha256: str) -> bool:
        """Pin a verified file (trust on first download). Returns True if the lock changed.

        Raises:
            IntegrityError: the file is already pinned to something else.
        """
        self.check(file, size, sha256)
        entry = PinEntry(path=file.path, size=size, sha256=sha256)
        if self.entries.get(file.id) == entry:
            return False
        self.entries[file.id] = entry
        return True

    def save(self) -> None:
        """Write the lock atomically (temp file + rename), sorted for stable diffs."""
        body = {
            "model": self.model,
            "files": {
                fid: {"path": e.path, "size": e.size, "sha256": e.sha256}
                for fid, e in sorted(self.entries.items())
            },
        }
        text = HEADER.format(model=self.model) + yaml.safe_dump(body, sort_keys=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, self.path)


def default_pins_path(manifest: Manifest, home: Path | None = None) -> Path:
    """`<home>/pins/<model>-<key>.yaml`: one pins file per manifest (two manifests of one model name, e.g.
    the shipped one and a copy, never share pins)."""
    key = hashlib.sha256(str(Path(manifest.source).resolve()).encode()).hexdigest()[:12]
    return (home or load_settings().home) / "pins" / f"{manifest.model}-{key}.yaml"


def load_pins(manifest: Manifest, path: Path | None = None) -> Pins:
    """The pins of `manifest` (empty when there are none yet), validated with located errors.

    Raises:
        ConfigError: the file is malformed or belongs to another model (file, line and key named).
    """
    path = path or default_pins_path(manifest)
    if not path.exists():
        return Pins(model=manifest.model, path=path)
    doc = load_yaml(path)
    data = doc.data or {}
    if not isinstance(data, dict):
        raise doc.error((), "a lock must be a mapping with model and files")
    if data.get("model") != manifest.model:
        raise doc.error(("model",), f"is {data.get('model')!r}, expected {manifest.model!r}")
    files = data.get("files") or {}
    if not isinstance(files, dict):
        raise doc.error(("files",), "must be a mapping of file id to path, size, sha256")
    lock = Pins(model=manifest.model, path=path)
    known = {**manifest.files, **({manifest.kit.id: manifest.kit} if manifest.kit else {})}  # + memedit kit
    for fid, item in files.items():
        where = ("files", fid)
        if fid not in known:
            raise doc.error(where, f"unknown file id (the manifest has: {', '.join(known)})")
        if not isinstance(item, dict):
            raise doc.error(where, "must be a mapping with path, size, sha256")
        size, sha = item.get("size"), item.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise doc.error((*where, "size"), "must be a number of bytes")
        if not isinstance(sha, str) or not SHA256.match(sha):
            raise doc.error((*where, "sha256"), "must be 64 lowercase hex digits")
        lock.entries[fid] = PinEntry(path=str(item.get("path") or known[fid].path), size=size, sha256=sha)
    return lock
