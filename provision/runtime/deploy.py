"""Deploy the chat runtime to boxes: `/data/sophon-fleet/runtime/<version>/`, `current` switched atomically.

A version is the runtime's code (`chat/`) plus the wheels for the box's platform, named by their hashes, so
an unchanged box is recognised and skipped. Per box:

    push      app.zip (chat/, unpacked to app/ and checked file by file), the wheelhouse, and the manifest's
              SAIL wheel when `import sophon.sail` fails — all verified like assets (size + sha256 on the box)
    install   a venv (--system-site-packages --without-pip) with the wheels unpacked into it
    selftest  `python -m chat selftest` against the box's verified model
    switch    `current` → the new version (ln + rename: atomic); old versions kept (`keep`), `--rollback`
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import tempfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from provision import __version__, boxlock
from provision.assets.cache import Cache
from provision.assets.pins import Pins
from provision.assets.push import BoxPusher, PushEvent, PushItem, transport_opener
from provision.boxpaths import (
    MODELS_DIR,
    RUNTIME_DIR,
    RUNTIME_LINK,
    WORK_DIR,
    UnsafePath,
    confined,
    plain_name,
)
from provision.boxside import box_install
from provision.errors import Cancelled, ConnectError, FactError, FleetError, NotReadyError, RemoteError
from provision.facts.parse import Facts
from provision.manifest import AssetFile, Manifest, Pinned
from provision.runtime.serve import restart_if_serving
from provision.runtime.wheelhouse import Wheelhouse, ensure_wheelhouse
from provision.ssh.transport import Transport

CHAT_PACKAGE = Path(__file__).resolve().parents[2] / "chat"
MARKER = ".deployed"
INSTALL_SOURCE = Path(box_install.__file__).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Bundle:
    """What one runtime version consists of, every file pinned."""

    version: str
    items: tuple[PushItem, ...]
    wheels: tuple[str, ...]  # file names installed into the venv, in order


@dataclass(frozen=True)
class DeployResult:
    host: str
    version: str
    status: str  # deployed | up-to-date | rolled-back
    previous: str | None
    selftest: dict[str, Any] | None
    transferred: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def _app_zip() -> tuple[bytes, dict[str, bytes]]:
    members: dict[str, bytes] = {}
    for path in sorted(CHAT_PACKAGE.rglob("*.py")):
        members[f"app/chat/{path.relative_to(CHAT_PACKAGE).as_posix()}"] = path.read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue(), members


def runtime_app_id() -> str:
    """`<tool version>+app.<sha256[:16]>`: the chat runtime code this controller deploys (a box's runtime
    version adds the hash of its platform's wheels)."""
    return f"{__version__}+app.{hashlib.sha256(_app_zip()[0]).hexdigest()[:16]}"


def app_archive(cache_dir: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    """`chat/` as a reproducible zip (`app/chat/...`) in the cache, and its members' sizes and sha256."""
    data, members = _app_zip()
    target = cache_dir / "runtime" / f"app-{hashlib.sha256(data).hexdigest()[:16]}.zip"
    if not target.exists():  # boxes deploy in parallel: a private temporary name, an atomic rename
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".part-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    contains = {
        name: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for name, d in members.items()
    }
    return target, contains


def _item(path: Path, name: str, *, unpack: str | None = None, contains: dict | None = None) -> PushItem:
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    pinned = {m: Pinned(v["size"], v["sha256"]) for m, v in (contains or {}).items()}
    file = AssetFile(name, name, None, (), Pinned(len(data), sha), unpack, pinned)
    return PushItem(file, len(data), sha, path)


def build_bundle(cache_dir: Path, house: Wheelhouse, sail: PushItem | None) -> Bundle:
    app, contains = app_archive(cache_dir)
    items = [_item(app, "app.zip", unpack="app", contains=contains)]
    items += [_item(house.dir / w.name, w.name) for w in house.wheels]
    wheels = [w.name for w in house.wheels]
    identity = hashlib.sha256(f"{items[0].sha256}:{house.key}".encode()).hexdigest()[:10]
    if sail is not None:
        items.append(sail)
        wheels.append(sail.name)
    return Bundle(f"{__version__}-{identity}{'-sail' if sail else ''}", tuple(items), tuple(wheels))


def sail_item(manifest: Manifest, cache: Cache, lock: Pins) -> PushItem:
    """The manifest's SoC SAIL wheel from the cache, checked against the lock."""
    file = next((f for f in manifest.files.values() if f.path.endswith(".whl")), None)
    if file is None:
        raise NotReadyError(f"`import sophon.sail` fails and {manifest.model}'s manifest has no SAIL wheel")
    cached = cache.lookup(manifest.model, file.path, lock.expected(file).sha256)
    if cached is None:
        raise NotReadyError(f"{file.path} is not in the cache", hint="run `sophon-fleet assets pull` first")
    lock.check(file, cached.size, cached.sha256)
    return PushItem(file, cached.size, cached.sha256, cached.blob)


def model_paths(manifest: Manifest, variant: str) -> tuple[str, str]:
    """(bmodel, token_config dir) of a variant as `assets push` lays it out on the box."""
    chosen = manifest.variant(variant)
    directory = PurePosixPath(MODELS_DIR, manifest.model, variant)
    token = next((f.unpack for f in chosen.files if f.unpack), "token_config")
    return str(directory / chosen.bmodel.path), str(directory / token)


def deployed_variant(facts: Facts, manifest: Manifest) -> str | None:
    """The best variant whose files are verified on the box (int8 before int4)."""
    verified = {a.variant for a in facts.assets if a.model == manifest.model and a.verified}
    return next((v.name for v in manifest.by_preference if v.name in verified), None)


class Deployer:
    """Deploys one box over its transport."""

    def __init__(
        self,
        transport: Transport,
        host: str,
        *,
        progress: Callable[[str, str], None] | None = None,
        cancel: threading.Event | None = None,
    ):
        self.transport, self.host = transport, host
        self.progress = progress or (lambda _host, _stage: None)
        self.cancel = cancel or threading.Event()  # Ctrl-C: no further stage starts (cli/interrupt.py)
        self.current_stage: str | None = None

    def stage(self, name: str, current: str | None) -> None:
        """Start stage `name`, unless the operator cancelled (checked only here, between stages)."""
        if self.cancel.is_set():
            raise Cancelled(
                f"{self.host}: interrupted before {name} (runtime in use unchanged: {current or 'none'})",
                hint="run the same `deploy` again: it starts over and switches only after its selftest",
            )
        self.current_stage = name
        self.progress(self.host, name)

    def _run(self, command: str, timeout: float = 300) -> str:
        return self.transport.run(command, timeout=timeout).stdout

    def current(self) -> str | None:
        out = self.transport.run(f"readlink {RUNTIME_LINK}", check=False).stdout.strip()
        return _version_name(out.rsplit("/", 1)[-1]) if out else None

    def marker(self, version: str) -> dict[str, Any] | None:
        path = confined(RUNTIME_DIR, f"{_version_name(version)}/{MARKER}")
        result = self.transport.run(["cat", "--", path], check=False)
        try:
            return json.loads(result.stdout) if result.ok else None
        except ValueError:
            return None

    def push(self, bundle: Bundle, on_event: Callable[[PushEvent], None]) -> int:
        opener = transport_opener(self.transport)
        pusher = BoxPusher(
            self.host, opener, "runtime", bundle.version, bundle.items, root=WORK_DIR, progress=on_event
        )
        return pusher.run().transferred

    def install(self, bundle: Bundle) -> None:
        directory = f"{RUNTIME_DIR}/{bundle.version}"
        command = " ".join(
            shlex.quote(p) for p in ("python3", "-c", INSTALL_SOURCE, directory, *bundle.wheels)
        )
        self._run(command, timeout=600)

    def selftest(self, version: str, bmodel: str, token: str) -> dict[str, Any]:
        directory = f"{RUNTIME_DIR}/{version}"
        args = ["../venv/bin/python", "-m", "chat", "selftest", "--bmodel", bmodel, "--token", token]
        command = f"cd {shlex.quote(directory + '/app')} && " + " ".join(shlex.quote(a) for a in args)
        result = self.transport.run(command, timeout=300, check=False)
        try:
            report = json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RemoteError(
                f"{self.host}: selftest printed no result: {(result.stderr or result.stdout)[-300:]}"
            )
        if not report.get("ok"):
            raise RemoteError(
                f"{self.host}: selftest failed: {report.get('message') or report}",
                hint="the previous runtime stays current",
            )
        return report

    def switch(self, version: str, marker: dict[str, Any] | None = None) -> None:
        """Point `current` at `version` atomically (and record the deployment)."""
        root = RUNTIME_DIR
        parts = []
        if marker is not None:
            doc = shlex.quote(json.dumps(marker))
            parts.append(
                f"printf '%s\\n' {doc} > {root}/{version}/{MARKER}.tmp && "
                f"mv {root}/{version}/{MARKER}.tmp {root}/{version}/{MARKER}"
            )
        parts.append(
            f"ln -sfn {shlex.quote(version)} {root}/.current.tmp && mv -T {root}/.current.tmp {root}/current"
        )
        parts.append(f"echo {shlex.quote(version)} >> {root}/history && sync")
        self._run(" && ".join(parts))

    def history(self) -> list[str]:
        out = self.transport.run(f"cat {RUNTIME_DIR}/history", check=False).stdout
        return [_version_name(line.strip()) for line in out.splitlines() if line.strip()]

    def prune(self, keep: int, current: str) -> list[str]:
        """Remove versions beyond the newest `keep` (never `current`)."""
        listing = self.transport.run(f"ls -1t {RUNTIME_DIR}", check=False).stdout.split()
        versions = [v for v in listing if v not in ("current", "history") and not v.startswith(".")]
        doomed = [v for v in versions[max(keep, 1) :] if v != current]
        if doomed:
            self._run("rm -rf " + " ".join(shlex.quote(f"{RUNTIME_DIR}/{v}") for v in doomed))
        return doomed


def _version_name(value: str) -> str:
    """A runtime version as the box reports it (history, `current`), checked to be one plain name."""
    try:
        return plain_name(value)
    except UnsafePath as exc:
        raise FactError(f"the box reports runtime version {value!r}: {exc}") from None


LOCK_NAME = "runtime"  # /data/sophon-fleet/locks/runtime.lock: one deploy or rollback per box at a time


def deploy_box(
    deployer: Deployer,
    facts: Facts,
    manifest: Manifest,
    *,
    cache: Cache,
    lock: Pins,
    keep: int = 3,
    on_push: Callable[[PushEvent], None] = lambda _e: None,
    break_lock: bool = False,
) -> DeployResult:
    """Bring one box's runtime up to date, holding the box's runtime lock; a box already at this version
    is left alone.

    Raises:
        LockedError: another deploy or rollback holds the box (named in the error).
        NotReadyError: no Python 3 on the box, or no verified model to test against.
        RemoteError / ConnectError / IntegrityError / DiskFullError: from the steps (current is unchanged).
    """
    held: boxlock.Held | None = None
    try:
        with boxlock.box_lock(deployer.transport, LOCK_NAME, "deploy", break_lock=break_lock) as held:
            return _deploy_locked(
                deployer, facts, manifest, cache=cache, lock=lock, keep=keep, on_push=on_push
            )
    except ConnectError as exc:
        if held is not None and not held.released:
            exc.hint = _lock_left(deployer, held, facts.runtime)
        raise


def _lock_left(deployer: Deployer, held: boxlock.Held, previous: str | None) -> str:
    """What a deploy that lost its box knows of the box's runtime, and how to go on once it answers."""
    in_use = (
        "the switch was under way: the runtime in use is the previous one or the new one"
        if deployer.current_stage == "switch"
        else f"the runtime in use is unchanged ({previous or 'none'})"
    )
    return (
        f"{in_use}; this run's lock {held.path} is still on the box: once it answers, "
        f"`sophon-fleet deploy --limit {deployer.host} --break-lock` (with this run's host options)"
    )


def _deploy_locked(
    deployer: Deployer,
    facts: Facts,
    manifest: Manifest,
    *,
    cache: Cache,
    lock: Pins,
    keep: int,
    on_push: Callable[[PushEvent], None],
) -> DeployResult:
    host = deployer.host
    if not facts.python.version or not facts.arch:
        raise NotReadyError(
            f"{host}: python3 or the architecture is unknown", hint="run `sophon-fleet doctor`"
        )
    variant = deployed_variant(facts, manifest)
    if variant is None:
        raise NotReadyError(
            f"{host}: no verified {manifest.model} model on the box to test the runtime with",
            hint="run `sophon-fleet assets push` first",
        )
    house = ensure_wheelhouse(cache.root, facts.arch, facts.python.version)
    sail = None if facts.python.sail_ok else sail_item(manifest, cache, lock)
    bundle = build_bundle(cache.root, house, sail)
    previous = facts.runtime
    done = deployer.marker(bundle.version) if previous == bundle.version else None
    if done is not None:
        # nothing ran: the selftest of the deploy that put it there would pass old numbers off as new
        return DeployResult(host, bundle.version, "up-to-date", previous, None)
    deployer.stage("push", previous)
    transferred = deployer.push(bundle, on_push)
    deployer.stage("install", previous)
    deployer.install(bundle)
    deployer.stage("selftest", previous)
    report = deployer.selftest(bundle.version, *model_paths(manifest, variant))
    deployer.stage("switch", previous)
    deployer.switch(bundle.version, {"version": bundle.version, "variant": variant, "selftest": report})
    restart_if_serving(deployer.transport)  # only now: the new version passed its selftest
    deployer.prune(keep, current=bundle.version)
    return DeployResult(host, bundle.version, "deployed", previous, report, transferred)


def rollback_box(deployer: Deployer, *, break_lock: bool = False) -> DeployResult:
    """Point `current` back at the version deployed before it (it must still be on the box), holding the
    box's runtime lock."""
    with boxlock.box_lock(deployer.transport, LOCK_NAME, "deploy --rollback", break_lock=break_lock):
        return _rollback_locked(deployer)


def _rollback_locked(deployer: Deployer) -> DeployResult:
    current = deployer.current()
    earlier = [v for v in deployer.history() if v != current]
    if not earlier:
        raise FleetError(f"{deployer.host}: no earlier runtime version to roll back to")
    target = earlier[-1]
    if deployer.marker(target) is None:
        raise FleetError(f"{deployer.host}: runtime {target} is no longer on the box (pruned)")
    deployer.switch(target)
    return DeployResult(deployer.host, target, "rolled-back", current, None)
