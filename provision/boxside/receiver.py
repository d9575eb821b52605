"""The box side of `assets push`: receive (or fetch) a file, hash it as it is written, fsync, commit.

Self-contained: Python 3.8 standard library only (the boxes run Ubuntu 20.04's python3.8), no imports
from sophon-fleet. The controller runs it as `python3 -c <this source> <mode> <json args>` over an SSH
exec channel (or a local pipe in tests) and talks JSON lines on stdout; data comes on stdin.

Modes:
  probe  {"dir", "files": [{"name", "size", "sha256", "unpack"?}], "reverify"?}
         -> {"event": "probe", "free": bytes, "files": {name: {"state", "part"}}}
            state: verified | unpacked-missing | part | absent | mismatch
  recv   {"dest", "size", "extra"?}       -> {"event": "ready", "offset"} ... data ... {"event": "received"}
  fetch  {"dest", "size", "url", "extra"?} -> {"event": "ready", "offset"} {"event": "progress"}...
                                              {"event": "received"}
         After "received" both wait for one command line on stdin:
           {"op": "commit", "sha256", "unpack"?, "contains"?} -> rename into place, marker, unpack
           {"op": "abort"}                                  -> drop the .part (it did not verify)
  unpack {"zip", "into", "contains"}      -> {"event": "unpacked"}

Every mode then serves a session: each further stdin line {"op": "recv" | "fetch" | "unpack", "args": {...}}
runs that mode in this process (no new channel, no new python3 per file); end of stdin ends it (exit 0).

`<dest>.part` holds bytes in flight; a new run resumes from it, hashing the prefix first. Nothing is at
`<dest>` until the controller has compared size and sha256 with its lock and said commit; then
`<dest>.verified` records them. Errors: {"event": "error", "code", "message"} and a non-zero exit.
"""

import hashlib
import json
import os
import select
import sys
import time

# shutil and zipfile are imported where they are used (unpack): together they cost a box ~9 ms at start

CHUNK = 1 << 20
EXIT_ERROR, EXIT_DISK_FULL, EXIT_SHORT = 2, 3, 4
MARGIN = 16 << 20
IDLE = 120  # seconds without data before a receiver gives up


class Failure(Exception):
    def __init__(self, code, message, status=EXIT_ERROR, **extra):
        Exception.__init__(self, message)
        self.code, self.status, self.extra = code, status, extra


def say(**event):
    sys.stdout.write(json.dumps(event, sort_keys=True) + "\n")
    sys.stdout.flush()


def free_bytes(path):
    while not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def hash_file(path, limit=None, digest=None):
    digest = digest or hashlib.sha256()
    left = limit
    with open(path, "rb") as f:
        while left is None or left > 0:
            block = f.read(CHUNK if left is None else min(CHUNK, left))
            if not block:
                break
            digest.update(block)
            if left is not None:
                left -= len(block)
    return digest


def read_marker(path):
    try:
        with open(path + ".verified") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json_atomic(path, doc):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_command():
    """One JSON line from stdin, read unbuffered (the data that may follow it must stay in the pipe);
    None at end of stdin. Gives up after IDLE s of silence, like the data stream."""
    line = b""
    while not line.endswith(b"\n"):
        if not select.select([0], [], [], IDLE)[0]:
            raise Failure("idle", f"no command for {IDLE} s", EXIT_SHORT)
        byte = os.read(0, 1)
        if not byte:
            break
        line += byte
    return json.loads(line.decode()) if line.strip() else None


def probe(args):
    base = args["dir"]
    files = {}
    for item in args["files"]:
        dest = os.path.join(base, item["name"])
        files[item["name"]] = probe_one(dest, item, bool(args.get("reverify")))
    say(event="probe", free=free_bytes(base), files=files)


def serve():
    """The session after the first mode: one op per stdin line until end of stdin."""
    while True:
        command = read_command()
        if command is None:
            return
        if command.get("op") not in ("recv", "fetch", "unpack"):
            raise Failure("usage", f"unknown session op {command.get('op')!r}")
        MODES[command["op"]](command["args"])


def probe_one(dest, item, reverify):
    part = dest + ".part"
    part_size = os.path.getsize(part) if os.path.isfile(part) else 0
    marker = read_marker(dest)
    want = {"size": item["size"], "sha256": item["sha256"]}
    if os.path.isfile(dest) and marker and {k: marker.get(k) for k in want} == want:
        if os.path.getsize(dest) != item["size"]:
            return {"state": "mismatch", "part": part_size, "detail": "size changed since verified"}
        if reverify and hash_file(dest).hexdigest() != item["sha256"]:
            return {"state": "mismatch", "part": part_size, "detail": "content changed since verified"}
        unpack = item.get("unpack")
        if unpack and not read_marker(os.path.join(os.path.dirname(dest), unpack)):
            return {"state": "unpacked-missing", "part": part_size}
        return {"state": "verified", "part": part_size, "hashed": bool(reverify)}
    if os.path.exists(dest):
        return {"state": "mismatch", "part": part_size, "detail": "present but not verified"}
    return {"state": "part" if part_size else "absent", "part": part_size}


def open_part(dest, size, extra):
    directory = os.path.dirname(dest) or "."
    os.makedirs(directory, exist_ok=True)
    part = dest + ".part"
    offset = os.path.getsize(part) if os.path.isfile(part) else 0
    if offset > size:
        os.truncate(part, 0)
        offset = 0
    need = size - offset + int(extra or 0)
    free = free_bytes(directory)
    if need and free < need + MARGIN:
        raise Failure(
            "disk_full",
            f"{need} bytes needed in {directory}, {free} free",
            EXIT_DISK_FULL,
            need=need,
            free=free,
        )
    digest = hash_file(part, offset) if offset else hashlib.sha256()
    return part, offset, digest


def write_stream(part, offset, digest, blocks, on_block=None):
    try:
        with open(part, "ab") as out:
            for block in blocks:
                out.write(block)
                digest.update(block)
                offset += len(block)
                if on_block:
                    on_block(offset)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC: keep the part for a resume once there is space
            raise Failure("disk_full", f"disk full writing {part}", EXIT_DISK_FULL)
        raise
    return offset


def stdin_blocks(count):
    """Exactly `count` bytes from stdin (fewer at EOF), read straight into one reused 1 MiB buffer."""
    try:  # a 1 MiB pipe (the default 64 KiB costs a context switch per 64 KiB)
        import fcntl

        fcntl.fcntl(0, 1031, CHUNK)  # F_SETPIPE_SZ
    except (ImportError, OSError):
        pass
    raw = sys.stdin.buffer.raw  # nothing was read from stdin before the data, so nothing is buffered
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while count > 0:
        # A controller whose link died never closes our stdin: give up after IDLE s of silence, so a
        # stale receiver does not linger beside the one the resumed push starts.
        if not select.select([0], [], [], IDLE)[0]:
            raise Failure("idle", f"no data for {IDLE} s; the part is kept for a resume", EXIT_SHORT)
        n = raw.readinto(view[: min(CHUNK, count)])
        if not n:
            return
        count -= n
        yield view[:n]


def recv(args):
    dest, size = args["dest"], int(args["size"])
    part, offset, digest = open_part(dest, size, args.get("extra"))
    say(event="ready", offset=offset)
    offset = write_stream(part, offset, digest, stdin_blocks(size - offset))
    finish(dest, part, offset, size, digest)


def fetch(args):
    import urllib.error
    import urllib.request

    dest, size, url = args["dest"], int(args["size"]), args["url"]
    part, offset, digest = open_part(dest, size, args.get("extra"))
    say(event="ready", offset=offset)
    if offset < size:
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"})
        try:
            response = urllib.request.urlopen(request, timeout=float(args.get("timeout", 30)))
        except (urllib.error.URLError, OSError) as exc:
            raise Failure("fetch", f"{url}: {exc}")
        with response:
            start = 0
            if response.status == 206:
                content_range = response.headers.get("Content-Range", "")
                start = (
                    int(content_range.split(" ")[1].split("-")[0])
                    if content_range.startswith("bytes ")
                    else -1
                )
            if start != offset:  # Range ignored or a different range: start over cleanly
                os.truncate(part, 0)
                offset, digest = 0, hashlib.sha256()
                if start != 0:
                    raise Failure("fetch", f"{url}: unexpected Content-Range {content_range!r}")
            last = [time.monotonic()]

            def report(done):
                if time.monotonic() - last[0] > 0.5:
                    last[0] = time.monotonic()
                    say(event="progress", done=done, total=size)

            def blocks():
                try:
                    while True:
                        block = response.read(CHUNK)
                        if not block:
                            return
                        yield block
                except OSError:
                    return

            offset = write_stream(part, offset, digest, blocks(), report)
    finish(dest, part, offset, size, digest)


def finish(dest, part, offset, size, digest):
    if offset < size:
        raise Failure(
            "short",
            f"got {offset} of {size} bytes; the part is kept for a resume",
            EXIT_SHORT,
            received=offset,
        )
    sha256 = digest.hexdigest()
    say(event="received", size=offset, sha256=sha256)
    command = read_command()
    if command is None:  # the controller went away: keep the complete part, the next run commits it
        raise Failure("no_command", "no commit from the controller; the part is kept", EXIT_SHORT)
    if command.get("op") != "commit" or command.get("sha256") != sha256 or offset != size:
        os.unlink(part)  # did not verify: the next run starts from zero
        say(event="aborted")
        return
    os.replace(part, dest)
    write_json_atomic(dest + ".verified", {"size": offset, "sha256": sha256, "at": int(time.time())})
    fsync_dir(os.path.dirname(dest) or ".")
    if command.get("unpack"):
        unpack(
            {"zip": dest, "into": command["unpack"], "contains": command.get("contains") or {}}, quiet=True
        )
    say(event="committed")


def unpack(args, quiet=False):
    """Unzip next to the zip into `into`, check `contains` (size/sha256), then swap it into place."""
    import shutil
    import zipfile

    zpath, name = args["zip"], args["into"]
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("-"):
        raise Failure("unsafe_path", f"refusing to unpack into {name!r}: not a plain directory name")
    base = os.path.dirname(zpath) or "."
    target = os.path.join(base, name)
    staging = os.path.join(base, f".{name}.unpack-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(zpath) as archive:
            for member in archive.namelist():
                parts = member.replace("\\", "/").split("/")
                if member.startswith("/") or ".." in parts:
                    raise Failure("unsafe_zip", f"refusing member {member!r}")
            archive.extractall(staging)
        root = os.path.join(staging, name) if os.path.isdir(os.path.join(staging, name)) else staging
        for member, want in sorted((args.get("contains") or {}).items()):
            rel = member[len(name) + 1 :] if member.startswith(name + "/") else member
            path = os.path.join(root, rel)
            if not os.path.isfile(path):
                raise Failure("integrity", f"{member} is missing from {zpath}")
            if want.get("size") is not None and os.path.getsize(path) != want["size"]:
                raise Failure("integrity", f"{member}: size {os.path.getsize(path)}, expected {want['size']}")
            if want.get("sha256") and hash_file(path).hexdigest() != want["sha256"]:
                raise Failure("integrity", f"{member}: sha256 does not match")
        old = f"{target}.old-{os.getpid()}"
        if os.path.exists(target):
            os.rename(target, old)
        os.rename(root, target)
        shutil.rmtree(old, ignore_errors=True)
        write_json_atomic(target + ".verified", {"from": os.path.basename(zpath), "at": int(time.time())})
        fsync_dir(base)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not quiet:
        say(event="unpacked", dir=target)


def locked(mode):
    """`mode` run holding an exclusive lock on `<dest>.part` (created if missing) for its whole
    conversation, so two pushes to one box never write the same file."""

    def run(args):
        import fcntl

        part = args["dest"] + ".part"
        os.makedirs(os.path.dirname(part) or ".", exist_ok=True)
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno == 28:
                raise Failure("disk_full", f"disk full creating {part}", EXIT_DISK_FULL)
            raise
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise Failure("busy", f"another push is writing {part}")
            mode(args)
        finally:
            os.close(fd)

    return run


MODES = {"probe": probe, "recv": locked(recv), "fetch": locked(fetch), "unpack": unpack}


def main(argv):
    if len(argv) != 3 or argv[1] not in MODES:
        say(event="error", code="usage", message="usage: receiver ({}) JSON".format("|".join(sorted(MODES))))
        return EXIT_ERROR
    try:
        MODES[argv[1]](json.loads(argv[2]))
        serve()
    except Failure as exc:
        fields = dict(exc.extra)
        say(event="error", code=exc.code, message=str(exc), **fields)
        return exc.status
    except Exception as exc:  # OSError, ValueError, KeyError, zipfile.BadZipFile: an event, not a traceback
        say(event="error", code=type(exc).__name__, message=str(exc))
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
