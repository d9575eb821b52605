"""The memory_edit kit: find it on the controller (file or URL, cached, sha256-pinned) and put it on a box.

Accepted archives: Sophgo's `memory_edit_v<ver>.tar.xz` (`memory_edit/memory_edit.sh`,
`memory_edit/bintools/`) or the vendor bundle `DeviceMemoryModificationKit.tgz`, whose inner
`memory_edit_v<ver>.tar.xz` is used.

Downloads use the assets machinery (provision/assets): the content-addressed cache, resumable verified
downloads, and the model's lock — a sha256 from the manifest or the lock must match; otherwise the first
verified download pins it there (trust on first use). A local `--kit FILE` is the operator's explicit choice
and is used as it is.

On the box the kit lives in /data/sophon-fleet/memory_edit (where `facts` looks for it), unpacked as root
(memory_edit runs as root and leaves root-owned files there), with the tarball's sha256 in `.kit-sha256`
so an identical kit is never uploaded twice.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shlex
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

from provision.assets.cache import Cache, sha256_file
from provision.assets.download import FileDownload
from provision.assets.pins import load_pins
from provision.assets.sources import source_for_url, sources_for
from provision.boxpaths import KIT_DIR, WORK_DIR, UnsafePath, relative_parts
from provision.errors import ConfigError, DiskFullError, FleetError, IntegrityError, RemoteError
from provision.manifest import AssetFile, Manifest, Pinned
from provision.settings import Settings
from provision.ssh.transport import Transport, quote_command

SCRIPT = "memory_edit/memory_edit.sh"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalKit:
    """A kit tarball on the controller, verified."""

    path: Path
    sha256: str
    source: str


def resolve_kit(spec: str | None, manifest: Manifest, settings: Settings) -> LocalKit:
    """The kit to upload: `spec` (a local file, used as it is; or a URL) or the manifest's
    `memory_edit_kit` from its mirrors/sources. Downloads go through the assets cache and lock: verified
    against the manifest's or the lock's sha256, pinned on first download, fetched once.
    Raises ConfigError (missing / not a kit), IntegrityError (sha256 differs from its pin)."""
    if spec is not None and not spec.startswith(("http://", "https://", "file://")):
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"kit {spec} does not exist", key="--kit")
        tarball = _inner_tarball(path, settings.cache_dir / "memedit")
        return LocalKit(tarball, sha256_file(tarball), str(path))
    if manifest.kit is None:
        if spec is None:
            raise ConfigError("the manifest names no memory_edit kit", hint="give one with --kit FILE|URL")
        name = Path(urlparse(spec).path).name or "memory_edit.tar.xz"
        kit_file = AssetFile("memory-edit-kit", name, None, (spec,), Pinned(None, None), None, {})
    else:
        kit_file = manifest.kit if spec is None else replace(manifest.kit, urls=(spec,))
    sources = (
        [source_for_url(spec)]
        if spec
        else sources_for(manifest, kit_file, mirrors=settings.mirrors, use_dfss=False)
    )
    if not sources:
        raise ConfigError("the manifest's memory_edit kit has no source", hint="give one with --kit FILE|URL")
    lock = load_pins(manifest)
    got = FileDownload(manifest.model, kit_file, lock, Cache(settings.cache_dir), sources).run()
    if lock.record(kit_file, got.size, got.sha256):
        lock.save()  # pinned on first download; later downloads must match
    tarball = _inner_tarball(got.blob, settings.cache_dir / "memedit")
    return LocalKit(tarball, sha256_file(tarball), got.source or str(got.blob))


def check_kit_members(members: list[tarfile.TarInfo], source: str) -> None:
    """A kit is regular files and directories below `memory_edit/`, nothing else: no absolute or `..`
    paths, no symlinks, hardlinks, devices or fifos. Checked on the controller, before anything is uploaded.

    Raises:
        ConfigError: naming the first offending member.
    """
    for member in members:
        try:
            parts = relative_parts(member.name)
        except UnsafePath as exc:
            raise ConfigError(f"{source}: kit member {member.name!r} {exc}", key="--kit") from None
        if parts[0] != "memory_edit":
            raise ConfigError(f"{source}: kit member {member.name!r} is outside memory_edit/", key="--kit")
        if not (member.isreg() or member.isdir()):
            kind = "a symlink" if member.issym() else "a hardlink" if member.islnk() else "a special file"
            raise ConfigError(
                f"{source}: kit member {member.name!r} is {kind}; refusing the kit", key="--kit"
            )


def shared_kit(manifest: Manifest, settings: Settings) -> Callable[[], LocalKit]:
    """The manifest's kit, resolved (downloaded, verified) on first call and shared by every box after:
    what a box without a kit of its own gets, one download for the whole run."""
    guard = threading.Lock()
    found: list[LocalKit] = []

    def resolve() -> LocalKit:
        with guard:
            if not found:
                found.append(resolve_kit(None, manifest, settings))
            return found[0]

    return resolve


def _inner_tarball(path: Path, cache: Path) -> Path:
    """The memory_edit tarball itself: `path`, or the one inside a DeviceMemoryModificationKit bundle."""
    try:
        with tarfile.open(path) as tar:
            names = tar.getnames()
            if SCRIPT in names:
                check_kit_members(tar.getmembers(), str(path))
                return path
            inner = [n for n in names if Path(n).name.startswith("memory_edit_v") and n.endswith(".tar.xz")]
            if not inner:
                raise ConfigError(f"{path} is not a memory_edit kit (no {SCRIPT})", key="--kit")
            member = tar.extractfile(sorted(inner)[-1])
            assert member is not None
            data = member.read()
    except tarfile.TarError as exc:
        raise ConfigError(f"{path} is not a readable kit archive: {exc}", key="--kit") from exc
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            if SCRIPT not in tar.getnames():
                raise ConfigError(f"{path}: the inner kit has no {SCRIPT}", key="--kit")
            check_kit_members(tar.getmembers(), f"{path} ({sorted(inner)[-1]})")
    except tarfile.TarError as exc:
        raise ConfigError(f"{path}: the inner kit is not a readable archive: {exc}", key="--kit") from exc
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{hashlib.sha256(data).hexdigest()[:16]}-{Path(sorted(inner)[-1]).name}"
    if not target.is_file():
        part = target.with_name(target.name + ".part")
        part.write_bytes(data)
        os.replace(part, target)
    return target


def kit_on_box(transport: Transport) -> str | None:
    """The sha256 of the kit sophon-fleet unpacked on the box, if any."""
    result = transport.run(["cat", f"{KIT_DIR}/.kit-sha256"], check=False)
    return result.stdout.strip() or None if result.ok else None


def upload_kit(transport: Transport, kit: LocalKit) -> str:
    """Put the kit in /data/sophon-fleet/memory_edit (verified by sha256 on the box); returns the script's
    folder. An identical kit already there is kept as it is."""
    if kit_on_box(transport) == kit.sha256:
        return KIT_DIR
    remote = f"{WORK_DIR}/memory_edit.upload.tar.xz"
    new = f"{KIT_DIR}.new"
    transport.run(["mkdir", "-p", WORK_DIR])
    try:
        with open(kit.path, "rb") as handle:
            transport.put_stream(handle, remote)
        got = transport.run(["sha256sum", remote]).stdout.split()[0]
        if got != kit.sha256:
            raise IntegrityError(
                f"{transport.host.name}: the uploaded kit's sha256 is {got}, not {kit.sha256}"
            )
    except BaseException:
        _clean_up_upload(transport, remote, new)
        raise
    # the trap removes the upload and a half-unpacked kit whatever happens (after the mv, only the upload)
    script = (
        f"set -e; trap 'rm -rf {new} {remote} {remote}.part' EXIT; rm -rf {new}; mkdir -p {new}; "
        f"tar -xf {remote} -C {new} --strip-components=1 --no-same-owner; "
        f"[ -x {new}/memory_edit.sh ] || {{ echo 'memory_edit.sh is missing or not executable' >&2; "
        "exit 3; }; "
        f"echo {kit.sha256} > {new}/.kit-sha256; rm -rf {KIT_DIR}; mv {new} {KIT_DIR}"
    )
    result = transport.run(script, sudo=True, check=False)
    if not result.ok:
        err = result.stderr.strip()
        full = "No space left" in err
        raise (DiskFullError if full else RemoteError)(
            f"{transport.host.name}: cannot unpack the kit in {KIT_DIR}: {err}",
            hint="free space on /data"
            if full
            else "the kit archive is not a memory_edit kit; nothing was kept",
        )
    return KIT_DIR


def _clean_up_upload(transport: Transport, remote: str, new: str) -> None:
    """Best effort after a failed upload: the box may be gone, then there is nothing more to do."""
    try:
        transport.run(["rm", "-rf", "--", new, remote, f"{remote}.part"], sudo=True, check=False, timeout=30)
    except FleetError as exc:
        log.debug("%s: could not remove the failed kit upload: %s", transport.host.name, exc)


def script_dir(kit_path: str) -> str:
    """Shell expression for the folder of a kit script (the deb's /bin symlink resolves to its target)."""
    return f'"$(dirname "$(readlink -f {shlex.quote(kit_path)})")"'


def memory_edit_command(folder_expr: str, args: list[str]) -> str:
    """`cd <folder> && ./memory_edit.sh ARGS` (run it as root: its folder may be root-owned)."""
    return f"cd {folder_expr} && ./memory_edit.sh {quote_command(args)} 2>&1"
