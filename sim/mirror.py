"""A mirror for the simulated fleet: stand-in assets at dfss-style paths, served over HTTP with Range.

    tree = build_asset_tree(root, bmodel_size=64 << 20)        # sophon-demo/ChatGLM4/... under root
    with Mirror(root, host="127.0.0.1", port=0) as mirror:      # ThreadingHTTPServer in a thread
        mirror.faults = Faults(drop_after=1 << 20)              # next request drops after 1 MiB
        ... mirror.url ... mirror.bytes_served() ...

Faults: drop the connection after N body bytes, flip one byte at a file offset, ignore Range (always
200 + the whole file), throttle to N bytes/s. Each fault fires on `times` requests, then the mirror behaves.
Run it anywhere (e.g. inside the fleet's network namespace):

    python -m sim.mirror build ROOT [--bmodel-size BYTES]
    python -m sim.mirror serve ROOT --bind 10.213.0.1 --port 8080 [--drop-after N] [--flip-at N] ...

The dfss-style SFTP side is `sim/sftpd.py` (a real OpenSSH sshd with internal-sftp rooted at the tree).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import re
import socket
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

GLM4_DIR = "sophon-demo/ChatGLM4"
SIM_MODEL = "glm4-9b-sim"  # the stand-ins' own model name (never the real glm4-9b)
BMODELS = {
    "int4": f"{GLM4_DIR}/models/BM1684X/glm4-9b_int4_1dev.bmodel",
    "int8": f"{GLM4_DIR}/models/BM1684X/glm4-9b_int8_1dev.bmodel",
}
TOKEN_ZIP = f"{GLM4_DIR}/token_config.zip"
SAIL_WHEEL = f"{GLM4_DIR}/sail/soc/sophon_arm-3.8.0-py3-none-any.whl"
RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
BLOCK = 1 << 20


# ---------------------------------------------------------------------------------------------- the tree


def opaque_bmodel(path: Path, size: int, seed: int) -> None:
    """Deterministic incompressible bytes: a seeded 1 MiB block, each copy stamped with its index."""
    block = bytearray(random.Random(seed).randbytes(BLOCK))
    with open(path, "wb") as out:
        for index in range((size + BLOCK - 1) // BLOCK):
            block[:8] = index.to_bytes(8, "little")
            out.write(block[: min(BLOCK, size - index * BLOCK)])


BmodelMaker = Callable[[Path, str, int, int], None]  # (path, variant, size, seed)


def default_bmodel_maker(path: Path, variant: str, size: int, seed: int) -> None:
    """Opaque bytes for now; the seam for loadable stand-ins (`sim.tinyglm.build_standin`, branch chat)."""
    opaque_bmodel(path, size, seed + (0 if variant == "int4" else 1))


def tiktoken_ranks(extra_words: int = 64, seed: int = 0) -> dict[bytes, int]:
    """A small GLM-4-style rank table: the 256 single bytes, then merges of common pairs and words."""
    ranks = {bytes([i]): i for i in range(256)}
    rng = random.Random(seed)
    words = [b"th", b"he", b"in", b"er", b"an", b" t", b" a", b"the", b" the", b"box", b" box", b"chat"]
    words += [
        bytes(rng.choice(b"etaoinshrdlu") for _ in range(rng.randint(2, 5))) for _ in range(extra_words)
    ]
    for word in words:
        ranks.setdefault(word, len(ranks))
    return ranks


def token_config_zip(path: Path, seed: int = 0) -> dict[str, tuple[int, str]]:
    """`token_config.zip` unpacking to `token_config/` with a real tiktoken-format `tokenizer.model`.

    Returns member -> (size, sha256) for the manifest's `contains`.
    """
    ranks = tiktoken_ranks(seed=seed)
    model = "".join(f"{base64.b64encode(tok).decode()} {rank}\n" for tok, rank in ranks.items()).encode()
    config = json.dumps({"tokenizer_class": "ChatGLM4Tokenizer", "eos_token": "<|endoftext|>"}).encode()
    members = {"token_config/tokenizer.model": model, "token_config/tokenizer_config.json": config}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2024, 8, 1, 0, 0, 0)), data)
    return {name: (len(data), hashlib.sha256(data).hexdigest()) for name, data in members.items()}


def sail_wheel(path: Path) -> None:
    """A valid py3-none-any wheel named like the vendor's (`sophon_arm`, package `sophon`).

    It carries the SAIL emulator (`sim/sail/sophon`) when that exists, else a stub `sophon.sail`.
    """
    emulator = Path(__file__).resolve().parent / "sail" / "sophon"
    files: dict[str, bytes] = {}
    if emulator.is_dir():
        for item in sorted(emulator.rglob("*.py")):
            files[f"sophon/{item.relative_to(emulator).as_posix()}"] = item.read_bytes()
    else:
        files["sophon/__init__.py"] = b""
        files["sophon/sail.py"] = b'"""Stand-in sophon.sail (the emulator is not built into this wheel)."""\n'
    info = "sophon_arm-3.8.0.dist-info"
    files[f"{info}/METADATA"] = b"Metadata-Version: 2.1\nName: sophon_arm\nVersion: 3.8.0\n"
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: sim.mirror\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2024, 8, 1, 0, 0, 0)), data)


@dataclass(frozen=True)
class AssetTree:
    """What `build_asset_tree` made: dfss path -> (size, sha256), and the zip's members."""

    root: Path
    files: dict[str, tuple[int, str]]
    token_members: dict[str, tuple[int, str]]

    def manifest_yaml(
        self, model: str = SIM_MODEL, pin: bool = False, mirrors: list[str] | None = None
    ) -> str:
        """A manifest of the ChatGLM4-9B stand-ins in this tree (pinned sizes/sha256 if `pin`), for tests
        and demos. Its model is `glm4-9b-sim`, never `glm4-9b`: caches, pins and box folders are keyed by
        the model, so the stand-ins can never be taken for the vendor's files."""
        ids = {BMODELS["int4"]: "bmodel-int4", BMODELS["int8"]: "bmodel-int8"}
        ids |= {TOKEN_ZIP: "token-config", SAIL_WHEEL: "sail-wheel"}
        lines = [f"model: {model}", "chip: bm1684x", "min_libsophon: 0.5.1", "min_sdk: V24.04.01"]
        lines += ['min_python: "3.8"', "seqlen: 512", "recommended_layout: {npu: 7615, vpu: 3072, vpp: 3072}"]
        lines += [f"mirrors: {json.dumps(mirrors or [])}", "files:"]
        for dfss, fid in ids.items():
            size, sha = self.files[dfss]
            lines += [f"  {fid}:", f"    path: {dfss.rsplit('/', 1)[1]}", f"    dfss: {dfss}"]
            if pin:
                lines += [f"    size: {size}", f"    sha256: {sha}"]
            if fid == "token-config":
                lines += ["    unpack: token_config", "    contains:"]
                for member, (msize, msha) in self.token_members.items():
                    lines += [f"      {member}: {{size: {msize}, sha256: {msha}}}"]
        lines += ["variants:"]
        for variant, heap in vendor_thresholds().items():
            lines += [f"  {variant}:", f"    min_heap_mib: {heap}"]
            lines += [f"    files: [bmodel-{variant}, token-config, sail-wheel]"]
        return "\n".join(lines) + "\n"


def vendor_thresholds() -> dict[str, int]:
    """The stand-ins' variants and thresholds: the vendor model's own (models/glm4-9b.yaml), so a simulated
    box is ready, or needs a layout, exactly when a real one would be."""
    from provision.manifest import load_manifest

    return {v.name: v.min_heap_mib for v in load_manifest("glm4-9b").variants.values()}


def build_asset_tree(
    root: Path,
    *,
    bmodel_size: int = 8 << 20,
    int8_size: int | None = None,
    seed: int = 0,
    bmodel_maker: BmodelMaker = default_bmodel_maker,
    loadable: bool = False,
) -> AssetTree:
    """Write the ChatGLM4 stand-in assets under `root` at their dfss paths (deterministic from `seed`).

    `loadable=True` makes the bmodels tiny real GLM-4s (`sim.tinyglm`, padded to the sizes) that the SAIL
    emulator runs, with the matching `token_config.zip`; otherwise they are opaque bytes (fast, any size).
    """
    root = Path(root)
    for rel in (*BMODELS.values(), TOKEN_ZIP, SAIL_WHEEL):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
    if loadable:
        members = _tinyglm_assets(root, seed, bmodel_size, int8_size or bmodel_size)
    else:
        bmodel_maker(root / BMODELS["int4"], "int4", bmodel_size, seed)
        bmodel_maker(root / BMODELS["int8"], "int8", int8_size or bmodel_size, seed)
        members = token_config_zip(root / TOKEN_ZIP, seed)
    sail_wheel(root / SAIL_WHEEL)
    files = {rel: _size_sha(root / rel) for rel in (*BMODELS.values(), TOKEN_ZIP, SAIL_WHEEL)}
    return AssetTree(root=root, files=files, token_members=members)


def _tinyglm_assets(root: Path, seed: int, int4_size: int, int8_size: int) -> dict[str, tuple[int, str]]:
    """Loadable stand-ins from `sim.tinyglm`: same seed, so both variants share one tokenizer."""
    import shutil
    import tempfile

    from sim.tinyglm import build_standin

    with tempfile.TemporaryDirectory(prefix="tinyglm-") as tmp:
        for variant, size in (("int4", int4_size), ("int8", int8_size)):
            standin = build_standin(Path(tmp) / variant, seed=seed, variant=variant)
            if size:
                from sim.tinyglm import pad_bmodel

                pad_bmodel(standin.bmodel, max(size, standin.bmodel.stat().st_size))
            shutil.copyfile(standin.bmodel, root / BMODELS[variant])
        shutil.copyfile(standin.token_zip, root / TOKEN_ZIP)
    with zipfile.ZipFile(root / TOKEN_ZIP) as archive:
        return {
            name: (len(data), hashlib.sha256(data).hexdigest())
            for name in archive.namelist()
            if not name.endswith("/")
            for data in [archive.read(name)]
        }


def _size_sha(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return path.stat().st_size, digest.hexdigest()


# ------------------------------------------------------------------------------------------- the server


@dataclass
class Faults:
    """Misbehaviour of the mirror; each fault fires on `times` matching requests, then stops."""

    drop_after: int | None = None  # close the connection after this many body bytes
    flip_at: int | None = None  # flip the byte at this file offset (xor 0xff)
    ignore_range: bool = False  # answer 200 with the whole file whatever Range says
    throttle: int | None = None  # bytes per second per response
    times: int = 1  # how many requests the drop/flip/ignore_range faults hit (0: every request)
    path: str | None = None  # only requests for this path (relative to the root); None: all
    hits: int = 0

    def applies(self, rel: str) -> bool:
        return (self.path is None or self.path == rel) and (self.times == 0 or self.hits < self.times)


@dataclass(frozen=True)
class Served:
    path: str
    status: int
    start: int
    sent: int


@dataclass
class Mirror:
    """A threaded HTTP server over `root` with Range support and switchable faults."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 0
    faults: Faults = field(default_factory=Faults)
    log: list[Served] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> Mirror:
        handler = type("MirrorHandler", (_Handler,), {"mirror": self})
        self._server = _QuietServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._serve, name="mirror", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._server is not None
        self._server.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Mirror:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def bytes_served(self, path: str | None = None) -> int:
        with self._lock:
            return sum(s.sent for s in self.log if path is None or s.path == path)

    def record(self, served: Served) -> None:
        with self._lock:
            self.log.append(served)

    def take_fault(self, rel: str) -> Faults | None:
        """The faults for this request (counting it as a hit), or None."""
        with self._lock:
            faults = self.faults
            if not faults.applies(rel):
                return Faults(throttle=faults.throttle) if faults.throttle else None
            faults.hits += 1
            return faults


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # clients that hang up are normal here
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    mirror: Mirror
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        rel = unquote(urlparse(self.path).path).lstrip("/")
        path = (self.mirror.root / rel).resolve()
        if not str(path).startswith(str(self.mirror.root) + os.sep) or not path.is_file():
            self._plain(404, b"not found\n")
            return
        stat = path.stat()
        size, etag = stat.st_size, f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'
        faults = self.mirror.take_fault(rel)
        start, end = self._range(size, etag, faults)
        if start is None:
            return
        partial = (start, end) != (0, size - 1) or (self.headers.get("Range") and not self._ignored(faults))
        self.send_response(206 if partial else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(end - start + 1))
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        sent = self._send_body(path, start, end, faults) if body else 0
        self.mirror.record(Served(rel, 206 if partial else 200, start, sent))

    @staticmethod
    def _ignored(faults: Faults | None) -> bool:
        return bool(faults and faults.ignore_range)

    def _range(self, size: int, etag: str, faults: Faults | None) -> tuple[int | None, int]:
        header = self.headers.get("Range")
        if not header or self._ignored(faults):
            return 0, size - 1
        if_range = self.headers.get("If-Range")
        if if_range and if_range != etag:
            return 0, size - 1
        match = RANGE.match(header.strip())
        if not match:
            return 0, size - 1
        start = int(match.group(1))
        end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
        if start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.mirror.record(Served(str(self.path), 416, start, 0))
            return None, 0
        return start, end

    def _send_body(self, path: Path, start: int, end: int, faults: Faults | None) -> int:
        sent, pos = 0, start
        limit = faults.drop_after if faults and faults.drop_after is not None else None
        began = time.monotonic()
        try:
            with open(path, "rb") as f:
                f.seek(start)
                while pos <= end:
                    block = f.read(min(BLOCK, end + 1 - pos))
                    if faults and faults.flip_at is not None and pos <= faults.flip_at < pos + len(block):
                        block = bytearray(block)
                        block[faults.flip_at - pos] ^= 0xFF
                    if limit is not None and sent + len(block) >= limit:
                        self.wfile.write(block[: limit - sent])
                        sent = limit
                        self._drop()
                        return sent
                    self.wfile.write(block)
                    sent += len(block)
                    pos += len(block)
                    if faults and faults.throttle:
                        ahead = sent / faults.throttle - (time.monotonic() - began)
                        if ahead > 0:
                            time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        return sent

    def _drop(self) -> None:
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _plain(self, status: int, text: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)


# ---------------------------------------------------------------------------------------------- the CLI


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sim.mirror", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="write the stand-in asset tree")
    build.add_argument("root", type=Path)
    build.add_argument("--bmodel-size", type=int, default=8 << 20)
    build.add_argument("--seed", type=int, default=0)
    serve = sub.add_parser("serve", help="serve a tree over HTTP until interrupted")
    serve.add_argument("root", type=Path)
    serve.add_argument("--bind", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--drop-after", type=int)
    serve.add_argument("--flip-at", type=int)
    serve.add_argument("--ignore-range", action="store_true")
    serve.add_argument("--throttle", type=int, help="bytes per second per response")
    serve.add_argument("--times", type=int, default=1, help="requests hit by a fault (0: all)")
    args = parser.parse_args(argv)
    if args.command == "build":
        tree = build_asset_tree(args.root, bmodel_size=args.bmodel_size, seed=args.seed)
        print(json.dumps({rel: {"size": s, "sha256": h} for rel, (s, h) in tree.files.items()}, indent=2))
        return
    faults = Faults(args.drop_after, args.flip_at, args.ignore_range, args.throttle, args.times)
    mirror = Mirror(args.root, host=args.bind, port=args.port, faults=faults).start()
    print(json.dumps({"url": mirror.url}), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        mirror.stop()


if __name__ == "__main__":
    main()
