"""Where asset bytes come from: HTTP(S) with Range, dfss-style SFTP, a local directory / file://.

Every source opens a stream at a byte offset and says where the stream really starts: a server that
ignores Range starts at 0, and the caller then restarts cleanly instead of appending the wrong bytes.

The dfss SFTP servers are public vendor mirrors with a published login (open/open). They publish no host
keys, so a key is trusted on first use and pinned in `<home>/dfss_known_hosts`; a changed key is refused
for that server. Integrity never rests on the SSH channel: every file is checked against the sha256 of the
manifest or the pins before it reaches its final path. SFTP goes through the tool's one SSH stack
(`provision/ssh/sftp.py`).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import requests
import urllib3

from provision.errors import ConnectError, SourceUnavailable, TransferFailed, TransferInterrupted
from provision.manifest import AssetFile, DfssServer, Manifest
from provision.ssh.sftp import SftpLogin, open_remote_file

CHUNK = 1 << 20
CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass
class Stream:
    """An open download: bytes from `offset` on, of a remote file of `size` bytes (None: unknown)."""

    offset: int
    size: int | None
    chunks: Iterator[bytes]
    validator: str | None = None  # HTTP ETag / Last-Modified, sent back as If-Range on resume
    close: Callable[[], None] = field(default=lambda: None)


class Source(Protocol):
    label: str

    def open(self, offset: int, validator: str | None = None) -> Stream:
        """Start delivering bytes at `offset` (or at 0 when the server cannot seek).

        Raises:
            SourceUnavailable: the file cannot be had from here.
            TransferInterrupted: the connection failed after it had started.
        """
        ...


class HttpSource:
    """HTTP(S) with `Range: bytes=N-`: checks Content-Range, sends If-Range, restarts if Range is ignored."""

    def __init__(self, url: str, *, timeout: float = 30.0, session: requests.Session | None = None) -> None:
        self.url = url
        self.label = url
        self.timeout = timeout
        self.session = session or requests.Session()

    def open(self, offset: int, validator: str | None = None) -> Stream:
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if validator:
                headers["If-Range"] = validator
        try:
            resp = self.session.get(self.url, headers=headers, stream=True, timeout=self.timeout)
        except requests.ConnectionError as exc:  # requests' own text is a screenful of pool internals
            raise SourceUnavailable(f"{self.url}: cannot connect") from exc
        except requests.Timeout as exc:
            raise SourceUnavailable(f"{self.url}: timed out after {self.timeout:g} s") from exc
        except requests.RequestException as exc:
            raise SourceUnavailable(f"{self.url}: {exc}") from exc
        if resp.status_code == 416 and offset:
            resp.close()
            total = _total_from(resp.headers.get("Content-Range", ""))
            if total == offset:  # everything is on disk already
                return Stream(offset=offset, size=total, chunks=iter(()), validator=validator)
            return self.open(0)
        if resp.status_code not in (200, 206):
            resp.close()
            raise SourceUnavailable(f"{self.url}: HTTP {resp.status_code}")
        start, size = 0, _int(resp.headers.get("Content-Length"))
        if resp.status_code == 206:
            match = CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                resp.close()  # a range we did not ask for: start over rather than splice wrong bytes
                return self.open(0)
            start = offset
            size = None if match.group(3) == "*" else int(match.group(3))
        new_validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
        return Stream(
            offset=start,
            size=size,
            chunks=self._iterate(resp),
            validator=new_validator,
            close=resp.close,
        )

    def _iterate(self, resp: requests.Response) -> Iterator[bytes]:
        try:
            yield from resp.raw.stream(CHUNK, decode_content=False)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransferInterrupted(f"{self.url}: {exc}") from exc
        finally:
            resp.close()


def _int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def _total_from(content_range: str) -> int | None:
    match = re.match(r"^bytes \*/(\d+)$", content_range)
    return int(match.group(1)) if match else None


class LocalSource:
    """A file in a local directory (or a file:// URL): seekable, never partial."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.label = f"file://{self.path}"

    def open(self, offset: int, validator: str | None = None) -> Stream:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed by the stream
        except OSError as exc:
            raise SourceUnavailable(f"{self.path}: {exc.strerror}") from exc
        size = self.path.stat().st_size
        f.seek(min(offset, size))

        def chunks() -> Iterator[bytes]:
            with f:
                while block := f.read(CHUNK):
                    yield block

        return Stream(offset=min(offset, size), size=size, chunks=chunks(), close=f.close)


class SftpSource:
    """dfss-style SFTP: connect to every server at once, keep the first that delivers, resume by seek."""

    def __init__(
        self,
        servers: tuple[DfssServer, ...] | list[DfssServer],
        path: str,
        *,
        known_hosts: Path | None = None,
        identity: Path | None = None,
        timeout: float = 20.0,
    ) -> None:
        self.servers = tuple(servers)
        self.path = path
        self.known_hosts = known_hosts
        self.identity = identity
        self.timeout = timeout
        self.label = f"sftp:{path}"

    def open(self, offset: int, validator: str | None = None) -> Stream:
        if not self.servers:
            raise SourceUnavailable("no dfss servers configured")
        pool = ThreadPoolExecutor(max_workers=len(self.servers), thread_name_prefix="dfss")
        pending = {pool.submit(self._start, server, offset) for server in self.servers}
        errors: list[str] = []
        winner: Stream | None = None
        while pending and winner is None:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    stream = future.result()
                except SourceUnavailable as exc:
                    errors.append(str(exc))
                    continue
                if winner is None:
                    winner = stream
                else:
                    stream.close()
        for future in pending:  # the slower servers: close them as they finish connecting
            future.add_done_callback(_close_if_stream)
        pool.shutdown(wait=False)
        if winner is None:
            raise SourceUnavailable("; ".join(errors))
        return winner

    def _start(self, server: DfssServer, offset: int) -> Stream:
        """Connect, stat, seek and read the first block: a server 'delivers' once that block is here."""
        where = f"sftp://{server.user}@{server.host}:{server.port}/{self.path}"
        login = SftpLogin(server.host, server.port, server.user, server.password, self.identity)
        try:
            remote = open_remote_file(
                login, self.path, offset, known_hosts=self.known_hosts, timeout=self.timeout
            )
        except ConnectError as exc:  # unreachable, refused, no such file, or a changed host key
            raise SourceUnavailable(f"{where}: {exc.message}") from exc
        try:
            first = remote.read(CHUNK) if remote.offset < remote.size else b""
        except TransferFailed as exc:
            remote.close()
            raise SourceUnavailable(f"{where}: {exc.message}") from exc

        def chunks() -> Iterator[bytes]:
            try:
                if first:
                    yield first
                while block := remote.read(CHUNK):
                    yield block
            except TransferFailed as exc:
                raise TransferInterrupted(f"{where}: {exc.message}") from exc
            finally:
                remote.close()

        return Stream(offset=remote.offset, size=remote.size, chunks=chunks(), close=remote.close)


def _close_if_stream(future) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


def source_for_url(url: str) -> Source:
    """A source for an http(s):// or file:// URL, or a plain local path."""
    if url.startswith(("http://", "https://")):
        return HttpSource(url)
    if url.startswith("file://"):
        return LocalSource(Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)))
    return LocalSource(Path(url))


def sources_for(
    manifest: Manifest,
    file: AssetFile,
    *,
    mirrors: tuple[str, ...] | list[str] = (),
    known_hosts: Path | None = None,
    sftp_identity: Path | None = None,
    use_dfss: bool = True,
) -> list[Source]:
    """Sources in order of preference: given mirrors, manifest mirrors, the file's URLs, then dfss SFTP.

    Mirrors hold files at their dfss path (`<mirror>/<dfss>`), or at the file's path when it has none.
    """
    rel = file.dfss or file.path
    result: list[Source] = [source_for_url(f"{m.rstrip('/')}/{rel}") for m in (*mirrors, *manifest.mirrors)]
    result += [source_for_url(url) for url in file.urls]
    if use_dfss and file.dfss and manifest.dfss_servers:
        result.append(
            SftpSource(manifest.dfss_servers, file.dfss, known_hosts=known_hosts, identity=sftp_identity)
        )
    return result
