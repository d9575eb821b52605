"""Distribution to boxes: the controller side of `assets push` (and of `--from-mirror` pulls on the box).

Each box runs `receiver.py` (Python 3.8, stdlib) on an exec channel; this module speaks its JSON-lines
protocol. One round trip probes what the box holds and its free disk; then per missing file the receiver
reports how much of a `.part` it already has (after hashing it), gets only the rest (or fetches it from a
mirror itself), hashes as it writes and reports size + sha256; only when those match the lock does the
controller say commit, and the receiver renames into place and writes `<file>.verified`. A dropped
channel is reopened and the file resumes; a box's failure never stops the others.

The channel is anything with `send`, `recv_line`, `exit_status`, `close` (`channels.py`): a local
subprocess in unit tests (`LocalChannel`), an SSH exec channel from `provision/ssh/transport.py` in the CLI
(`transport_opener`).
"""

from __future__ import annotations

import json
import shlex
import threading
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from provision.assets.cache import Cache
from provision.assets.pins import Pins
from provision.backoff import backoff_delay
from provision.boxpaths import MODELS_DIR
from provision.boxside import receiver
from provision.errors import (
    Cancelled,
    ConnectError,
    DiskFullError,
    FleetError,
    IntegrityError,
    RemoteError,
    UnreachableError,
)
from provision.fleet import run_fleet
from provision.manifest import AssetFile, Manifest
from provision.ssh.channels import (  # re-exported: deploy and tests take them from here
    Channel,
    ChannelBroken,
    LocalChannel,
    Opener,
    transport_opener,
)

__all__ = [
    "DEFAULT_ROOT",
    "BoxPush",
    "BoxPusher",
    "BoxTarget",
    "Channel",
    "ChannelBroken",
    "FilePush",
    "LocalChannel",
    "Opener",
    "PushEvent",
    "PushItem",
    "plan_push",
    "push_fleet",
    "receiver_command",
    "transport_opener",
]

DEFAULT_ROOT = MODELS_DIR
CHUNK = 1 << 20
RECEIVER_SOURCE = Path(receiver.__file__).read_text(encoding="utf-8")


def receiver_command(mode: str, args: Mapping[str, Any], python: str = "python3") -> str:
    """The shell command that runs the receiver on a box (its source travels in argv; -S: it needs no
    site-packages, and skipping them saves the box ~5 ms per start)."""
    return " ".join(shlex.quote(p) for p in (python, "-S", "-c", RECEIVER_SOURCE, mode, json.dumps(args)))


@dataclass(frozen=True)
class PushItem:
    """One file a variant needs on a box, with what the lock says it must be."""

    file: AssetFile
    size: int
    sha256: str
    blob: Path | None  # the cached copy (None when boxes fetch from a mirror)
    url: str | None = None  # where boxes fetch it from in --from-mirror mode

    @property
    def name(self) -> str:
        return self.file.path

    def unpacked_size(self) -> int:
        if not self.file.unpack or self.blob is None:
            return 0
        with zipfile.ZipFile(self.blob) as archive:
            return sum(info.file_size for info in archive.infolist())


def plan_push(
    manifest: Manifest, variant: str, *, cache: Cache, lock: Pins, mirror: str | None = None
) -> list[PushItem]:
    """What a box running `variant` needs, each file checked against the lock before anything is sent.

    Raises:
        FleetError: a file is not pinned (pull or pin first) or, without a mirror, not in the cache.
        IntegrityError: the cached file differs from the lock (a lock mismatch is refused).
    """
    items = []
    for file in manifest.variant(variant).files:
        want = lock.expected(file)
        if want.sha256 is None or want.size is None:
            raise FleetError(
                f"{file.path} is not pinned: boxes are checked against the lock",
                hint="run `sophon-fleet assets pull` (or `assets pin`) first",
            )
        cached = cache.lookup(manifest.model, file.path, want.sha256)
        if cached is None and mirror is None:
            other = cache.named(manifest.model, file.path)
            if other is not None:
                raise IntegrityError(
                    f"{file.path}: the cached copy ({other.sha256[:16]}…) does not match the pinned "
                    f"{want.sha256[:16]}… ({lock.path.name})",
                    hint="run `sophon-fleet assets pull` to fetch the pinned file",
                )
            raise FleetError(f"{file.path} is not in the cache", hint="run `sophon-fleet assets pull` first")
        if cached is not None:
            lock.check(file, cached.size, cached.sha256)
        url = f"{mirror.rstrip('/')}/{file.dfss or file.path}" if mirror else None
        items.append(PushItem(file, want.size, want.sha256, cached.blob if cached else None, url))
    return items


@dataclass(frozen=True)
class PushEvent:
    host: str
    file: str
    phase: str  # probing | present | sending | fetching | hashing | committed | unpacked | retry
    done: int = 0
    total: int | None = None
    note: str = ""


@dataclass(frozen=True)
class FilePush:
    name: str
    status: str  # present | sent | fetched | unpacked (dry run: would-send | would-unpack)
    transferred: int = 0  # bytes the controller sent (or the box fetched) for this file
    resumed_from: int = 0
    attempts: int = 0


@dataclass
class BoxPush:
    host: str
    variant: str
    dest: str
    files: list[FilePush] = field(default_factory=list)

    @property
    def skipped(self) -> bool:
        return all(f.status == "present" for f in self.files)

    @property
    def planned(self) -> bool:
        """A dry run that found something to do."""
        return any(f.status.startswith("would-") for f in self.files)

    @property
    def transferred(self) -> int:
        """Bytes sent or fetched (in a dry run: the bytes that would be)."""
        return sum(f.transferred for f in self.files)


@dataclass
class BoxPusher:
    """Brings one box's variant directory in line with the lock."""

    host: str
    open_exec: Opener
    model: str
    variant: str
    items: Sequence[PushItem]
    root: str = DEFAULT_ROOT
    reverify: bool = False
    from_mirror: bool = False
    progress: Callable[[PushEvent], None] = lambda _e: None
    retries: int = 3
    backoff: float = 0.5
    python: str = "python3"
    dry_run: bool = False  # probe and plan only: nothing is sent, written or renamed
    cancel: threading.Event | None = None  # Ctrl-C: finish the current file, start no other
    # the receiver that answered last, kept running: it takes the next op on stdin (one python3 per box)
    _session: Channel | None = field(default=None, init=False, repr=False)

    @property
    def dest(self) -> str:
        return str(PurePosixPath(self.root, self.model, self.variant))

    def run(self) -> BoxPush:
        """Raises DiskFullError, IntegrityError, RemoteError or ConnectError (from the opener)."""
        try:
            return self._run()
        finally:
            self._end_session()

    def _run(self) -> BoxPush:
        result = BoxPush(self.host, self.variant, self.dest)
        self._emit("", "probing")
        states = self._probe()
        todo = [i for i in self.items if states["files"][i.name]["state"] != "verified"]
        self._check_space(todo, states)
        for item in self.items:
            state = states["files"][item.name]
            if self.cancel is not None and self.cancel.is_set() and state["state"] != "verified":
                done = ", ".join(f.name for f in result.files) or "none"
                raise Cancelled(
                    f"{self.host}: interrupted before {item.name} (files in place: {done})",
                    hint="run the same `assets push` again: it resumes where this one stopped",
                )
            if state["state"] == "verified":
                self._emit(item.name, "present", item.size, item.size)
                result.files.append(FilePush(item.name, "present"))
            elif self.dry_run:  # the plan only: what would be sent (and from where it would resume)
                part = state["part"] if state["state"] == "part" else 0
                action = "would-unpack" if state["state"] == "unpacked-missing" else "would-send"
                result.files.append(FilePush(item.name, action, item.size - part, part))
            elif state["state"] == "unpacked-missing":
                self._unpack(item)
                result.files.append(FilePush(item.name, "unpacked"))
            else:
                result.files.append(self._transfer(item))
        return result

    # -- the conversation --------------------------------------------------------------------------

    def _probe(self) -> dict[str, Any]:
        files = [
            {"name": i.name, "size": i.size, "sha256": i.sha256, "unpack": i.file.unpack} for i in self.items
        ]
        args = {"dir": self.dest, "files": files, "reverify": self.reverify}
        return self._once("probe", args, "probe")

    def _check_space(self, todo: Sequence[PushItem], states: Mapping[str, Any]) -> None:
        need = sum(i.size - states["files"][i.name]["part"] + i.unpacked_size() for i in todo)
        free = states["free"]
        if need and free < need + receiver.MARGIN:
            raise DiskFullError(
                f"{self.host}: {self.dest} needs {need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free",
                hint="free space under /data on the box (old variants: `assets push` keeps them)",
            )

    def _unpack(self, item: PushItem) -> None:
        args = {"zip": f"{self.dest}/{item.name}", "into": item.file.unpack, "contains": self._contains(item)}
        self._once("unpack", args, "unpacked")
        self._emit(item.name, "unpacked", item.size, item.size)

    def _transfer(self, item: PushItem) -> FilePush:
        mode = "fetch" if self.from_mirror else "recv"
        args: dict[str, Any] = {"dest": f"{self.dest}/{item.name}", "size": item.size}
        args["extra"] = item.unpacked_size()
        if self.from_mirror:
            args["url"] = item.url
        transferred, resumed_from, mismatches = [0], None, 0
        for attempt in range(1, self.retries + 1):
            channel = self._start(mode, args, attempt)
            if channel is None:
                continue
            try:
                ready = self._expect(channel, "ready")
                offset = int(ready["offset"])
                resumed_from = offset if resumed_from is None else resumed_from
                if self.from_mirror:
                    received = self._await_fetch(channel, item, offset)
                    transferred[0] += received["size"] - offset
                else:
                    self._send(channel, item, offset, transferred)
                    received = self._expect(channel, "received")
                if received["size"] != item.size or received["sha256"] != item.sha256:
                    channel.send(b'{"op": "abort"}\n')
                    self._expect(channel, "aborted")
                    self._session = channel  # the receiver waits for the next op: the retry
                    mismatches += 1
                    self._emit(item.name, "retry", 0, item.size, "sha256 mismatch on the box")
                    continue
                commit: dict[str, Any] = {"op": "commit", "sha256": item.sha256}
                if item.file.unpack:
                    commit |= {"unpack": item.file.unpack, "contains": self._contains(item)}
                channel.send(json.dumps(commit).encode() + b"\n")
                self._expect(channel, "committed")
                self._session = channel
                self._emit(item.name, "committed", item.size, item.size)
                status = "fetched" if self.from_mirror else "sent"
                return FilePush(item.name, status, transferred[0], resumed_from or 0, attempt)
            except ChannelBroken as exc:
                channel.close()
                self._emit(item.name, "retry", 0, item.size, str(exc))
                time.sleep(backoff_delay(attempt, self.backoff))
            except BaseException:
                channel.close()
                raise
        if mismatches:
            raise IntegrityError(
                f"{self.host}: {item.name} did not verify on the box after {mismatches} tries"
            )
        raise RemoteError(f"{self.host}: {item.name}: the transfer kept failing ({self.retries} attempts)")

    def _send(self, channel: Channel, item: PushItem, offset: int, counter: list[int]) -> None:
        """Send the blob from `offset`; `counter[0]` counts every byte handed to the channel.

        Channels with `send_file` (local pipes, OpenSSH client processes) get the bytes by sendfile;
        others (paramiko channels) by 1 MiB reads.
        """
        assert item.blob is not None
        fast = getattr(channel, "send_file", None)
        with open(item.blob, "rb") as f:
            f.seek(offset)
            while offset < item.size:
                if fast is not None:
                    n = fast(f, offset, min(8 * CHUNK, item.size - offset))
                else:
                    block = f.read(CHUNK)
                    channel.send(block)
                    n = len(block)
                if not n:
                    raise ChannelBroken(f"{item.blob} ended at byte {offset}")
                counter[0] += n
                offset += n
                self._emit(item.name, "sending", offset, item.size)

    def _await_fetch(self, channel: Channel, item: PushItem, offset: int) -> dict[str, Any]:
        while True:
            event = self._read(channel)
            if event.get("event") == "progress":
                self._emit(item.name, "fetching", int(event["done"]), item.size)
                continue
            return self._check(event, "received")

    @staticmethod
    def _contains(item: PushItem) -> dict[str, dict[str, Any]]:
        return {m: {"size": p.size, "sha256": p.sha256} for m, p in item.file.contains.items()}

    def _open(self, command: str, attempt: int) -> Channel | None:
        """A new channel; None after a connection failure that another attempt may overcome."""
        try:
            return self.open_exec(command)
        except UnreachableError:
            raise  # no answer (dark box, dead link): report it now, not after more connect timeouts
        except ConnectError as exc:
            if attempt >= self.retries:
                raise
            self._emit("", "retry", note=exc.message)
            time.sleep(backoff_delay(attempt, self.backoff))
            return None

    def _start(self, mode: str, args: Mapping[str, Any], attempt: int) -> Channel | None:
        """The running session given `mode`'s op, or a new receiver for it (None: see `_open`)."""
        session, self._session = self._session, None
        if session is not None:
            try:
                session.send(json.dumps({"op": mode, "args": args}).encode() + b"\n")
                return session
            except ChannelBroken:
                session.close()
        return self._open(receiver_command(mode, args, self.python), attempt)

    def _end_session(self) -> None:
        """End of stdin ends the session's receiver (exit 0)."""
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def _once(self, mode: str, args: Mapping[str, Any], expect: str) -> dict[str, Any]:
        """One answer from the receiver; it is kept running for the next op."""
        for attempt in range(1, self.retries + 1):
            channel = self._start(mode, args, attempt)
            if channel is None:
                continue
            try:
                event = self._expect(channel, expect)
            except ChannelBroken:
                channel.close()
                time.sleep(backoff_delay(attempt, self.backoff))
                continue
            except BaseException:
                channel.close()
                raise
            self._session = channel
            return event
        raise RemoteError(f"{self.host}: the receiver did not answer `{mode}` ({self.retries} attempts)")

    def _expect(self, channel: Channel, name: str) -> dict[str, Any]:
        return self._check(self._read(channel), name)

    def _read(self, channel: Channel) -> dict[str, Any]:
        line = channel.recv_line()
        if not line:
            raise ChannelBroken("the receiver's output ended")
        try:
            return json.loads(line)
        except ValueError as exc:
            raise RemoteError(f"{self.host}: the receiver said {line[:200]!r}") from exc

    def _check(self, event: dict[str, Any], name: str) -> dict[str, Any]:
        if event.get("event") == name:
            return event
        if event.get("event") == "error":
            code, message = event.get("code"), event.get("message", "")
            if code == "disk_full":
                raise DiskFullError(f"{self.host}: {message}", hint="free space under /data on the box")
            if code in ("short", "idle", "no_command"):
                raise ChannelBroken(message)
            if code == "integrity":
                raise IntegrityError(f"{self.host}: {message}")
            if code == "busy":
                raise RemoteError(
                    f"{self.host}: {message}",
                    hint="another `assets push` or `deploy` to this box is running: retry when it is done",
                )
            raise RemoteError(f"{self.host}: receiver error {code}: {message}")
        raise RemoteError(f"{self.host}: expected {name!r} from the receiver, got {event}")

    def _emit(self, name: str, phase: str, done: int = 0, total: int | None = None, note: str = "") -> None:
        self.progress(PushEvent(self.host, name, phase, done, total, note))


@dataclass(frozen=True)
class BoxTarget:
    """A box to push to: its name, how to run a command on it, and the variant it gets."""

    host: str
    open_exec: Opener
    variant: str

    @property
    def name(self) -> str:  # what the fleet engine keys results by
        return self.host


def push_fleet(
    manifest: Manifest,
    targets: Sequence[BoxTarget],
    *,
    cache: Cache,
    lock: Pins,
    root: str = DEFAULT_ROOT,
    mirror: str | None = None,
    reverify: bool = False,
    max_parallel: int = 8,
    progress: Callable[[PushEvent], None] = lambda _e: None,
    retries: int = 3,
    backoff: float = 0.5,
    dry_run: bool = False,
    cancel: threading.Event | None = None,
) -> dict[str, BoxPush | FleetError]:
    """Push each box its variant, `max_parallel` boxes at a time (through the fleet engine); returns
    host -> result or error.

    Plans (and checks against the lock) once per variant before any box is touched, so a lock mismatch
    is refused for the whole fleet. Per-box failures — whatever a box raised — are returned, never raised.

    Raises:
        IntegrityError / FleetError: from planning (nothing was sent).
    """
    plans = {
        v: plan_push(manifest, v, cache=cache, lock=lock, mirror=mirror) for v in {t.variant for t in targets}
    }

    def one(target: BoxTarget) -> BoxPush:
        return BoxPusher(
            target.host,
            target.open_exec,
            manifest.model,
            target.variant,
            plans[target.variant],
            root=root,
            reverify=reverify,
            from_mirror=mirror is not None,
            progress=progress,
            retries=retries,
            backoff=backoff,
            dry_run=dry_run,
            cancel=cancel,
        ).run()

    result = run_fleet(targets, one, forks=max(1, max_parallel))
    return {o.host.host: o.result for o in result}
