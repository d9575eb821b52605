"""Verified, resumable, parallel downloads into the cache (`assets pull`).

A download resumes from the bytes already in its `.part` file (hashing that prefix first, so the
stream is never read twice), hashes while it streams, and reaches the cache only by an atomic rename
after size and sha256 matched the manifest/lock. A mismatch discards the `.part` (or sets it aside when
asked) and fetches again; a dropped connection resumes where it stopped.
"""

from __future__ import annotations

import errno
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from provision.assets.cache import Cache, CachedFile, ensure_free, hash_prefix, sha256_file
from provision.assets.pins import Pins
from provision.assets.sources import Source, SourceUnavailable, TransferInterrupted, sources_for
from provision.backoff import backoff_delay
from provision.errors import DiskFullError, FleetError, IntegrityError, Mismatch
from provision.manifest import AssetFile, Manifest


@dataclass(frozen=True)
class ProgressEvent:
    """Progress of one file. phase: hashing | downloading | cached | done | retry."""

    file_id: str
    phase: str
    done: int
    total: int | None
    note: str = ""


ProgressFn = Callable[[ProgressEvent], None]


def _no_progress(_event: ProgressEvent) -> None:
    pass


@dataclass(frozen=True)
class FileResult:
    """What happened to one file: where it is, and what it cost to get it."""

    file_id: str
    path: str
    size: int
    sha256: str
    blob: Path
    status: str  # cached | downloaded
    source: str | None = None
    transferred: int = 0  # bytes received from sources, over every attempt
    resumed_from: int = 0  # bytes that were on disk when this pull started
    attempts: int = 0
    set_aside: tuple[str, ...] = ()  # corrupt downloads kept for inspection (--keep-corrupt)


@dataclass
class PullReport:
    model: str
    files: list[FileResult] = field(default_factory=list)
    pins_path: Path | None = None
    lock_updated: bool = False


@dataclass
class FileDownload:
    """One file's way into the cache, over a list of sources in order of preference."""

    model: str
    file: AssetFile
    lock: Pins
    cache: Cache
    sources: Sequence[Source]
    progress: ProgressFn = _no_progress
    keep_corrupt: bool = False
    retries: int = 3  # attempts per source
    backoff: float = 0.5  # seconds before the first retry (provision.backoff)
    transferred: int = 0
    attempts: int = 0
    set_aside: list[str] = field(default_factory=list)

    @property
    def origins(self) -> list[str]:
        return [source.label for source in self.sources]

    def run(self) -> FileResult:
        """Return the verified cached file, downloading it if needed.

        Raises:
            IntegrityError: no source delivered bytes matching the pinned size/sha256.
            DiskFullError: the cache's disk cannot hold the file.
            FleetError: no source could deliver the file at all.
        """
        want = self.lock.expected(self.file)
        cached = self.cache.lookup(self.model, self.file.path, want.sha256, self.origins)
        if cached and (want.size is None or cached.size == want.size):
            self.cache.point_name(self.model, self.file.path, cached.blob)  # repair a stale or lost name
            self._emit("cached", cached.size, cached.size)
            return self._result(cached, "cached", None, 0)
        part = self.cache.part_path(self.model, self.file.path)
        resumed_from = part.stat().st_size if part.exists() else 0
        errors: list[str] = []
        mismatches = 0
        for source in self.sources:
            for attempt in range(1, self.retries + 1):
                self.attempts += 1
                try:
                    placed = self._attempt_on_disk(source, part)
                    return self._result(placed, "downloaded", source.label, resumed_from)
                except SourceUnavailable as exc:
                    errors.append(str(exc))
                    break
                except TransferInterrupted as exc:
                    errors.append(str(exc))
                    self._emit("retry", 0, None, note=str(exc))
                    time.sleep(backoff_delay(attempt, self.backoff))
                except Mismatch as exc:
                    mismatches += 1
                    errors.append(str(exc))
                    self._emit("retry", 0, None, note=str(exc))
        summary = "; ".join(_once(e) for e in errors[-4:]) or "no sources"
        if mismatches:
            raise IntegrityError(
                f"{self.file.path}: no source delivered the pinned content ({summary})",
                hint="nothing was placed in the cache; check the mirrors, or the lock if the file changed",
            )
        raise FleetError(
            f"{self.file.path}: could not download ({summary})", hint="check the network/mirrors"
        )

    def _attempt_on_disk(self, source: Source, part: Path) -> CachedFile:
        try:
            return self._attempt(source, part)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                done = part.stat().st_size if part.exists() else 0
                raise DiskFullError(
                    f"{self.file.path}: disk full in {part.parent} after {done} bytes",
                    hint="free some space and pull again: the download resumes from the bytes on disk",
                ) from exc
            raise

    def _attempt(self, source: Source, part: Path) -> CachedFile:
        want = self.lock.expected(self.file)
        part.parent.mkdir(parents=True, exist_ok=True)
        offset = part.stat().st_size if part.exists() else 0
        if want.size is not None and offset > want.size:
            offset = self._truncate(part, 0)
        meta = self.cache.read_part_meta(part)
        digest = self._hash_existing(part, offset, want.size)
        stream = source.open(offset, meta.get("validator") if meta.get("source") == source.label else None)
        try:
            if stream.offset != offset:  # the server cannot resume: start over cleanly
                offset = self._truncate(part, stream.offset)
                digest = hash_prefix(part, offset) if offset else hashlib.sha256()
            total = stream.size if stream.size is not None else want.size
            if want.size is not None and stream.size is not None and stream.size != want.size:
                raise SourceUnavailable(f"{source.label}: has {stream.size} bytes, pinned {want.size}")
            ensure_free(part.parent, (total or 0) - offset, self.file.path)
            self.cache.write_part_meta(part, {"source": source.label, "validator": stream.validator})
            offset = self._write(stream.chunks, part, digest, offset, total)
        finally:
            stream.close()
        if total is not None and offset < total:
            raise TransferInterrupted(f"{source.label}: stream ended at byte {offset} of {total}")
        return self._verify_and_place(part, offset, digest.hexdigest(), source.label)

    def _hash_existing(self, part: Path, offset: int, total: int | None):
        if not offset:
            return hashlib.sha256()
        hashed = 0

        def on_bytes(n: int) -> None:
            nonlocal hashed
            hashed += n
            self._emit("hashing", hashed, total)

        return hash_prefix(part, offset, on_bytes)

    def _write(self, chunks, part: Path, digest, offset: int, total: int | None) -> int:
        with open(part, "ab") as out:
            for chunk in chunks:
                out.write(chunk)
                digest.update(chunk)
                offset += len(chunk)
                self.transferred += len(chunk)
                self._emit("downloading", offset, total)
                if total is not None and offset > total:
                    break
        return offset

    def _verify_and_place(self, part: Path, size: int, sha256: str, origin: str) -> CachedFile:
        try:
            self.lock.check(self.file, size, sha256)
        except IntegrityError as exc:
            if self.keep_corrupt:
                self.set_aside.append(str(self.cache.set_aside(part, self.model, self.file.path, sha256)))
            else:
                part.unlink(missing_ok=True)
            part.with_name(part.name + ".json").unlink(missing_ok=True)
            raise Mismatch(exc.message) from exc
        placed = self.cache.place(part, self.model, self.file.path, sha256, origin)
        self._emit("done", size, size)
        return placed

    @staticmethod
    def _truncate(part: Path, size: int) -> int:
        with open(part, "ab") as f:
            f.truncate(size)
        return size

    def _emit(self, phase: str, done: int, total: int | None, note: str = "") -> None:
        self.progress(ProgressEvent(self.file.id, phase, done, total, note))

    def _result(self, cached: CachedFile, status: str, source: str | None, resumed_from: int) -> FileResult:
        return FileResult(
            file_id=self.file.id,
            path=cached.path,
            size=cached.size,
            sha256=cached.sha256,
            blob=cached.blob,
            status=status,
            source=source,
            transferred=self.transferred,
            resumed_from=resumed_from,
            attempts=self.attempts,
            set_aside=tuple(self.set_aside),
        )


def pull(
    manifest: Manifest,
    variants: Sequence[str],
    *,
    cache: Cache,
    lock: Pins,
    mirrors: Sequence[str] = (),
    known_hosts: Path | None = None,
    sftp_identity: Path | None = None,
    use_dfss: bool = True,
    parallel: int = 4,
    keep_corrupt: bool = False,
    progress: ProgressFn = _no_progress,
    retries: int = 3,
    backoff: float = 0.5,
    failures: list[FleetError] | None = None,
) -> PullReport:
    """Bring every file of `variants` into the cache, verified; pin new files in the lock.

    Files download in parallel. Each verified file is recorded in the lock (trust on first download
    when neither the manifest nor the lock pins it) and the lock is saved as soon as it changes.

    With a `failures` list, every file that failed is appended to it (one error each) and the report of
    the others is returned; without it, the first failure is raised.

    Raises:
        DiskFullError: the cache cannot hold what is missing (checked before anything starts).
        IntegrityError / FleetError: from the first file that failed (after every file was tried).
    """
    files = manifest.files_for(list(variants))
    _check_disk_for(files, manifest.model, cache, lock)
    report = PullReport(model=manifest.model, pins_path=lock.path)
    guard = threading.Lock()

    def one(file: AssetFile) -> FileResult:
        srcs = sources_for(
            manifest,
            file,
            mirrors=tuple(mirrors),
            known_hosts=known_hosts,
            sftp_identity=sftp_identity,
            use_dfss=use_dfss,
        )
        job = FileDownload(
            manifest.model, file, lock, cache, srcs, progress, keep_corrupt, retries=retries, backoff=backoff
        )
        result = job.run()
        with guard:
            if lock.record(file, result.size, result.sha256):
                lock.save()
                report.lock_updated = True
        return result

    failed: list[FleetError] = []
    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="pull") as pool:
        futures = [pool.submit(one, f) for f in files]
        for future in futures:
            try:
                report.files.append(future.result())
            except FleetError as exc:
                failed.append(exc)
    if failures is not None:
        failures.extend(failed)
    elif failed:
        raise failed[0]
    return report


def _once(error: str) -> str:
    """`label: label: reason` (a source that names itself in its own error) as `label: reason`."""
    pieces = []
    for piece in error.split("; "):
        label, sep, rest = piece.partition(": ")
        pieces.append(rest if sep and rest.startswith(f"{label}: ") else piece)
    return "; ".join(pieces)


def _check_disk_for(files: Sequence[AssetFile], model: str, cache: Cache, lock: Pins) -> None:
    need = 0
    for file in files:
        want = lock.expected(file)
        if want.size is None or cache.lookup(model, file.path, want.sha256):
            continue
        part = cache.part_path(model, file.path)
        need += want.size - (part.stat().st_size if part.exists() else 0)
    ensure_free(cache.root, need, f"pulling {model}")


@dataclass(frozen=True)
class VerifyResult:
    file_id: str
    path: str
    status: str  # ok | missing | corrupt | unpinned
    size: int | None = None
    sha256: str | None = None
    detail: str = ""


def verify(
    manifest: Manifest,
    variants: Sequence[str],
    *,
    cache: Cache,
    lock: Pins,
    mirrors: Sequence[str] = (),
    progress: ProgressFn = _no_progress,
) -> list[VerifyResult]:
    """Re-hash every cached file of `variants` and compare with its blob name and the lock."""

    results = []
    for file in manifest.files_for(list(variants)):
        cached = _lookup(manifest, file, cache, lock, mirrors)
        if cached is None:
            results.append(VerifyResult(file.id, file.path, "missing"))
            continue
        done = 0

        def on_bytes(n: int, fid: str = file.id, total: int = cached.size) -> None:
            nonlocal done
            done += n
            progress(ProgressEvent(fid, "hashing", done, total))

        sha = sha256_file(cached.blob, on_bytes)
        status, detail = "ok", ""
        if sha != cached.sha256:
            # set aside, so the next `assets pull` downloads it again instead of calling it cached
            moved = cache.set_aside(cached.blob, manifest.model, file.path, sha)
            cache.link_path(manifest.model, file.path).unlink(missing_ok=True)
            status = "corrupt"
            detail = f"content hashes to {sha[:16]}…, its name says {cached.sha256[:16]}…; moved to {moved}"
        else:
            try:
                lock.check(file, cached.size, sha)
                if lock.expected(file).sha256 is None:
                    status = "unpinned"
            except IntegrityError as exc:
                status, detail = "corrupt", exc.message
        results.append(VerifyResult(file.id, file.path, status, cached.size, sha, detail))
    return results


def pin(
    manifest: Manifest, variants: Sequence[str], *, cache: Cache, lock: Pins, mirrors: Sequence[str] = ()
) -> list[str]:
    """Write the sizes and sha256 of the cached files of `variants` into the lock (re-hashing them).

    Returns the ids newly pinned or changed.

    Raises:
        IntegrityError: a cached file differs from what is already pinned, or is corrupt.
        FleetError: a file is not in the cache (pull it first).
    """

    changed = []
    for file in manifest.files_for(list(variants)):
        cached = _lookup(manifest, file, cache, lock, mirrors)
        if cached is None:
            raise FleetError(f"{file.path} is not in the cache", hint="run `sophon-fleet assets pull` first")
        sha = sha256_file(cached.blob)
        if sha != cached.sha256:
            raise IntegrityError(f"{file.path}: the cached blob is corrupt", hint="delete it and pull again")
        if lock.record(file, cached.size, sha):
            changed.append(file.id)
    if changed:
        lock.save()
    return changed


def _lookup(
    manifest: Manifest, file: AssetFile, cache: Cache, lock: Pins, mirrors: Sequence[str]
) -> CachedFile | None:
    """The cached file of a manifest entry: its pinned blob, or unpinned the one downloaded from the entry's
    own sources."""
    origins = [s.label for s in sources_for(manifest, file, mirrors=tuple(mirrors))]
    return cache.lookup(manifest.model, file.path, lock.expected(file).sha256, origins)
