"""Push to "boxes" that are local directories, the receiver running in a subprocess (no SSH)."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from provision.assets.cache import Cache
from provision.assets.download import pull
from provision.assets.push import BoxPusher, BoxTarget, plan_push, push_fleet, receiver_command
from provision.errors import DiskFullError, IntegrityError, RemoteError
from provision.ssh.channels import ChannelBroken, LocalChannel
from sim.mirror import BMODELS, Faults
from sim.sftpd import is_root
from tests.assets.conftest import BMODEL_SIZE, write_manifest
from tests.py38 import PY38, need_py38

PYTHON = PY38 or sys.executable  # the receiver as a box runs it, where this machine has 3.8


@pytest.fixture
def pulled(tmp_path, tree, mirror):
    """A manifest whose files are pulled into a cache and pinned in the lock."""
    manifest, lock = write_manifest(tmp_path, tree, mirrors=[mirror.url])
    cache = Cache(tmp_path / "cache")
    pull(manifest, ["int4", "int8"], cache=cache, lock=lock, use_dfss=False, backoff=0)
    return manifest, lock, cache


class CutLink:
    """Opens local channels; the first to carry more than `cut` bytes (the probe's session, which takes the
    first file) dies (SIGKILL, like a dropped link)."""

    def __init__(self, cut=None):
        self.cut = cut
        self.commands = []

    def __call__(self, command):
        self.commands.append(command)
        channel = LocalChannel(command)
        if self.cut is None:
            return channel
        sent = [0]
        original = channel.send

        def send(data):
            if self.cut is not None and sent[0] + len(data) > self.cut:
                self.cut = None
                channel.proc.kill()
                raise ChannelBroken("link cut")
            sent[0] += len(data)
            original(data)

        def send_file(f, offset, count):
            f.seek(offset)
            send(f.read(count))
            return count

        channel.send = send
        channel.send_file = send_file
        return channel


def targets(tmp_path, n, variant="int4"):
    return [BoxTarget(f"box{i}", CutLink(), variant) for i in range(n)]


def test_receiver_is_python38_and_reports_usage():
    py38 = need_py38()
    out = subprocess.run(
        [py38, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True
    )
    assert out.stdout.strip() == "(3, 8)"
    command = receiver_command("nonsense", {}, python=py38)
    done = subprocess.run(["bash", "-c", command], input="", capture_output=True, text=True)
    assert done.returncode == 2 and json.loads(done.stdout)["code"] == "usage"


def test_push_three_boxes_one_link_cut_then_second_push_skipped(tmp_path, pulled, tree):
    manifest, lock, cache = pulled
    root = tmp_path / "boxes"
    cut = CutLink(cut=(3 << 20) + 777)
    boxes = [
        BoxTarget("box0", CutLink(), "int4"),
        BoxTarget("box1", cut, "int4"),
        BoxTarget("box2", CutLink(), "int8"),
    ]
    roots = {b.host: root / b.host for b in boxes}
    results = {}
    for box in boxes:  # one root per box: push_fleet takes one root, so run per box here
        results |= push_fleet(
            manifest,
            [box],
            cache=cache,
            lock=lock,
            root=str(roots[box.host]),
            backoff=0,
            progress=lambda e: None,
        )
    for host, result in results.items():
        assert not isinstance(result, Exception), result
        vdir = roots[host] / "glm4-9b-sim" / result.variant
        bmodel = BMODELS[result.variant].rsplit("/", 1)[1]
        assert (vdir / bmodel).read_bytes() == (tree.root / BMODELS[result.variant]).read_bytes()
        marker = json.loads((vdir / f"{bmodel}.verified").read_text())
        assert marker["sha256"] == tree.files[BMODELS[result.variant]][1]
        assert (vdir / "token_config" / "tokenizer.model").is_file()
        assert not list(vdir.glob("*.part"))
    # one receiver per box does the probe and every file (a session); the cut box needed one more
    assert [len(b.open_exec.commands) for b in boxes] == [1, 2, 1]
    assert len(results["box0"].files) == 3 and all(f.status == "sent" for f in results["box0"].files)
    cut_box = next(f for f in results["box1"].files if f.name.endswith(".bmodel"))
    assert cut_box.attempts == 2
    # re-sent bytes after the cut: at most what was in flight (pipe buffer), far below one 8 MiB chunk
    assert BMODEL_SIZE <= cut_box.transferred <= BMODEL_SIZE + (1 << 20)
    assert cut_box.resumed_from == 0

    again = push_fleet(manifest, [boxes[0]], cache=cache, lock=lock, root=str(roots["box0"]), backoff=0)
    assert again["box0"].skipped and again["box0"].transferred == 0


def test_push_resumes_a_part_left_on_the_box(tmp_path, pulled, tree):
    manifest, lock, cache = pulled
    vdir = tmp_path / "box" / "glm4-9b-sim" / "int4"
    vdir.mkdir(parents=True)
    data = (tree.root / BMODELS["int4"]).read_bytes()
    (vdir / "glm4-9b_int4_1dev.bmodel.part").write_bytes(data[: 5 << 20])
    items = plan_push(manifest, "int4", cache=cache, lock=lock)
    result = BoxPusher(
        "b", LocalChannel, "glm4-9b-sim", "int4", items, root=str(tmp_path / "box"), python=PYTHON
    ).run()
    bmodel = next(f for f in result.files if f.name.endswith(".bmodel"))
    assert bmodel.resumed_from == 5 << 20 and bmodel.transferred == BMODEL_SIZE - (5 << 20)


def test_corrupt_prefix_on_the_box_is_aborted_and_resent(tmp_path, pulled, tree):
    manifest, lock, cache = pulled
    vdir = tmp_path / "box" / "glm4-9b-sim" / "int4"
    vdir.mkdir(parents=True)
    (vdir / "glm4-9b_int4_1dev.bmodel.part").write_bytes(b"\x00" * (2 << 20))
    items = plan_push(manifest, "int4", cache=cache, lock=lock)
    result = BoxPusher(
        "b", LocalChannel, "glm4-9b-sim", "int4", items, root=str(tmp_path / "box"), backoff=0
    ).run()
    bmodel = next(f for f in result.files if f.name.endswith(".bmodel"))
    assert bmodel.attempts == 2 and bmodel.transferred == BMODEL_SIZE + BMODEL_SIZE - (2 << 20)
    assert (vdir / "glm4-9b_int4_1dev.bmodel").read_bytes() == (tree.root / BMODELS["int4"]).read_bytes()


def test_reverify_finds_a_file_changed_on_the_box(tmp_path, pulled):
    manifest, lock, cache = pulled
    items = plan_push(manifest, "int4", cache=cache, lock=lock)
    root = str(tmp_path / "box")
    BoxPusher("b", LocalChannel, "glm4-9b-sim", "int4", items, root=root).run()
    target = tmp_path / "box" / "glm4-9b-sim" / "int4" / "glm4-9b_int4_1dev.bmodel"
    data = bytearray(target.read_bytes())
    data[12345] ^= 0xFF
    target.write_bytes(bytes(data))
    trusting = BoxPusher("b", LocalChannel, "glm4-9b-sim", "int4", items, root=root).run()
    assert trusting.skipped  # the marker is trusted without --reverify
    checked = BoxPusher("b", LocalChannel, "glm4-9b-sim", "int4", items, root=root, reverify=True).run()
    bmodel = next(f for f in checked.files if f.name.endswith(".bmodel"))
    assert bmodel.status == "sent" and bmodel.transferred == BMODEL_SIZE


def test_lock_mismatch_is_refused_before_sending(tmp_path, pulled, tree):
    manifest, lock, cache = pulled
    sha = tree.files[BMODELS["int4"]][1]
    lock.path.write_text(lock.path.read_text().replace(sha, "b" * 64))
    from provision.assets.pins import load_pins

    opened = CutLink()
    with pytest.raises(IntegrityError, match="does not match the pinned"):
        push_fleet(
            manifest, [BoxTarget("b", opened, "int4")], cache=cache, lock=load_pins(manifest), backoff=0
        )
    assert opened.commands == []


def test_push_from_mirror_fetches_on_the_box_and_resumes(tmp_path, pulled, tree, mirror):
    manifest, lock, cache = pulled
    mirror.log.clear()
    mirror.faults = Faults(drop_after=(1 << 20) + 5, path=BMODELS["int8"])
    box = BoxTarget("b", CutLink(), "int8")
    result = push_fleet(
        manifest,
        [box],
        cache=Cache(tmp_path / "empty"),
        lock=lock,
        root=str(tmp_path / "box"),
        mirror=mirror.url,
        backoff=0,
    )["b"]
    assert not isinstance(result, Exception), result
    bmodel = next(f for f in result.files if f.name.endswith(".bmodel"))
    assert bmodel.status == "fetched" and bmodel.attempts == 2
    assert mirror.bytes_served(BMODELS["int8"]) == BMODEL_SIZE + 123
    vdir = tmp_path / "box" / "glm4-9b-sim" / "int8"
    assert (vdir / "token_config" / "tokenizer.model").is_file()


def test_box_disk_full_is_reported_before_sending(tmp_path, pulled):
    if not is_root():
        pytest.skip("mounting a tmpfs needs root")
    manifest, lock, cache = pulled
    mount = tmp_path / "boxdata"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], check=True)
    try:
        opened = CutLink()
        result = push_fleet(
            manifest, [BoxTarget("b", opened, "int4")], cache=cache, lock=lock, root=str(mount)
        )
        assert isinstance(result["b"], DiskFullError) and "needs" in result["b"].message
        assert len(opened.commands) == 1  # only the probe ran
        assert not any(mount.rglob("*.bmodel"))
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_unsafe_zip_is_refused_by_the_receiver(tmp_path):
    import zipfile

    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as archive:
        archive.writestr("../escape.txt", b"x")
    command = receiver_command("unpack", {"zip": str(zpath), "into": "out", "contains": {}}, python=PYTHON)
    done = subprocess.run(["bash", "-c", command], input="", capture_output=True, text=True)
    assert done.returncode == 2 and json.loads(done.stdout)["code"] == "unsafe_zip"
    assert not (tmp_path.parent / "escape.txt").exists()


def test_loadable_standins_pulled_and_pushed_run_the_chat_runtime(tmp_path):
    """The mirror's loadable assets survive pull + push and the runtime loads them on the 'box'."""
    from provision.assets.pins import load_pins
    from provision.manifest import load_manifest
    from sim.mirror import build_asset_tree

    tree = build_asset_tree(tmp_path / "mirror", bmodel_size=0, loadable=True)
    (tmp_path / "glm4-9b.yaml").write_text(tree.manifest_yaml(pin=True))
    manifest = load_manifest(tmp_path / "glm4-9b.yaml")
    lock, cache = load_pins(manifest), Cache(tmp_path / "cache")
    pull(manifest, ["int4"], cache=cache, lock=lock, mirrors=[f"file://{tree.root}"], use_dfss=False)
    items = plan_push(manifest, "int4", cache=cache, lock=lock)
    BoxPusher("b", LocalChannel, "glm4-9b-sim", "int4", items, root=str(tmp_path / "box")).run()
    vdir = tmp_path / "box" / "glm4-9b-sim" / "int4"
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(repo, "sim", "sail"), repo]))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "chat",
            "selftest",
            "--bmodel",
            str(vdir / "glm4-9b_int4_1dev.bmodel"),
            "--token",
            str(vdir / "token_config"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["ok"] is True


def test_box_holding_a_file_the_lock_no_longer_pins_gets_the_new_one(tmp_path, pulled, tree):
    """Boxes are checked against the lock: a verified marker for other content does not count."""
    manifest, lock, cache = pulled
    root = str(tmp_path / "box")
    items = plan_push(manifest, "int4", cache=cache, lock=lock)
    vdir = tmp_path / "box" / "glm4-9b-sim" / "int4"
    vdir.mkdir(parents=True)
    old = b"an older vendor build"
    (vdir / "glm4-9b_int4_1dev.bmodel").write_bytes(old)
    marker = {"size": len(old), "sha256": "c" * 64}
    (vdir / "glm4-9b_int4_1dev.bmodel.verified").write_text(json.dumps(marker))
    result = BoxPusher("b", LocalChannel, "glm4-9b-sim", "int4", items, root=root).run()
    bmodel = next(f for f in result.files if f.name.endswith(".bmodel"))
    assert bmodel.status == "sent"
    assert (vdir / "glm4-9b_int4_1dev.bmodel").read_bytes() == (tree.root / BMODELS["int4"]).read_bytes()


def test_dry_run_plans_without_touching_the_box(tmp_path, pulled, tree):
    manifest, lock, cache = pulled
    vdir = tmp_path / "box" / "glm4-9b-sim" / "int4"
    vdir.mkdir(parents=True)
    (vdir / "glm4-9b_int4_1dev.bmodel.part").write_bytes((tree.root / BMODELS["int4"]).read_bytes()[:1000])
    before = sorted(p.name for p in vdir.iterdir())
    items = plan_push(manifest, "int4", cache=cache, lock=lock)
    plan = BoxPusher(
        "b", LocalChannel, "glm4-9b-sim", "int4", items, root=str(tmp_path / "box"), dry_run=True
    ).run()
    assert plan.planned and not plan.skipped
    bmodel = next(f for f in plan.files if f.name.endswith(".bmodel"))
    assert bmodel.status == "would-send" and bmodel.resumed_from == 1000
    assert bmodel.transferred == BMODEL_SIZE - 1000
    assert sorted(p.name for p in vdir.iterdir()) == before


def test_controller_gone_before_commit_keeps_the_complete_part(tmp_path, pulled, tree):
    manifest, lock, cache = pulled
    dest = tmp_path / "box" / "f.bin"
    data = (tree.root / BMODELS["int4"]).read_bytes()
    channel = LocalChannel(receiver_command("recv", {"dest": str(dest), "size": len(data)}, python=PYTHON))
    assert json.loads(channel.recv_line())["offset"] == 0
    channel.send(data)
    assert json.loads(channel.recv_line())["event"] == "received"
    channel.proc.stdin.close()  # the link drops before the controller could say commit
    assert json.loads(channel.recv_line())["code"] == "no_command"
    assert channel.exit_status() == 4
    channel.close()
    assert not dest.exists() and (tmp_path / "box" / "f.bin.part").stat().st_size == len(data)
    again = LocalChannel(receiver_command("recv", {"dest": str(dest), "size": len(data)}, python=PYTHON))
    assert json.loads(again.recv_line())["offset"] == len(data)  # nothing left to send
    received = json.loads(again.recv_line())
    again.send(json.dumps({"op": "commit", "sha256": received["sha256"]}).encode() + b"\n")
    assert json.loads(again.recv_line())["event"] == "committed"
    again.close()
    assert dest.read_bytes() == data


def test_fetch_mode_restarts_cleanly_when_the_mirror_ignores_range(tmp_path, pulled, tree, mirror):
    manifest, lock, cache = pulled
    vdir = tmp_path / "box" / "glm4-9b-sim" / "int4"
    vdir.mkdir(parents=True)
    (vdir / "glm4-9b_int4_1dev.bmodel.part").write_bytes(b"\xff" * (1 << 20))  # wrong bytes, if appended to
    mirror.faults = Faults(ignore_range=True, times=0)
    items = plan_push(manifest, "int4", cache=cache, lock=lock, mirror=mirror.url)
    pusher = BoxPusher(
        "b", LocalChannel, "glm4-9b-sim", "int4", items, root=str(tmp_path / "box"), from_mirror=True
    )
    result = pusher.run()
    bmodel = next(f for f in result.files if f.name.endswith(".bmodel"))
    assert bmodel.status == "fetched" and bmodel.attempts == 1
    assert (vdir / "glm4-9b_int4_1dev.bmodel").read_bytes() == (tree.root / BMODELS["int4"]).read_bytes()


def test_receiver_serves_ops_until_the_end_of_stdin(tmp_path):
    """After its first mode a receiver takes further ops on stdin; an unknown op is a usage error."""
    dest = tmp_path / "box" / "f.bin"
    probe = {"dir": str(dest.parent), "files": [{"name": "f.bin", "size": 3, "sha256": "0" * 64}]}
    command = receiver_command("probe", probe, python=PYTHON)
    recv = {"op": "recv", "args": {"dest": str(dest), "size": 3}}
    commit = {"op": "commit", "sha256": hashlib.sha256(b"abc").hexdigest()}
    script = f"{json.dumps(recv)}\nabc{json.dumps(commit)}\n"
    done = subprocess.run(["bash", "-c", command], input=script, capture_output=True, text=True, timeout=30)
    events = [json.loads(line)["event"] for line in done.stdout.splitlines()]
    assert done.returncode == 0 and events == ["probe", "ready", "received", "committed"]
    assert dest.read_bytes() == b"abc"

    done = subprocess.run(
        ["bash", "-c", command], input='{"op": "rm", "args": {}}\n', capture_output=True, text=True
    )
    assert done.returncode == 2 and json.loads(done.stdout.splitlines()[-1])["code"] == "usage"


def test_two_pushes_never_write_one_part(tmp_path):
    """While one receiver holds `<dest>.part`, a second is refused (busy) and leaves it alone."""
    dest = tmp_path / "box" / "f.bin"
    data = os.urandom(1 << 16)
    args = {"dest": str(dest), "size": len(data)}
    first = LocalChannel(receiver_command("recv", args, python=PYTHON))
    try:
        assert json.loads(first.recv_line())["event"] == "ready"
        second = subprocess.run(
            ["bash", "-c", receiver_command("recv", args, python=PYTHON)],
            input="",
            capture_output=True,
            text=True,
        )
        assert second.returncode == 2 and json.loads(second.stdout)["code"] == "busy"
        first.send(data)
        assert json.loads(first.recv_line())["event"] == "received"
        first.send(json.dumps({"op": "commit", "sha256": hashlib.sha256(data).hexdigest()}).encode() + b"\n")
        assert json.loads(first.recv_line())["event"] == "committed"
    finally:
        first.close()
    assert dest.read_bytes() == data and not (tmp_path / "box" / "f.bin.part").exists()
    with pytest.raises(RemoteError, match="another push") as refused:
        BoxPusher("box", None, "glm4-9b-sim", "int4", [])._check(json.loads(second.stdout), "ready")
    assert "retry when it is done" in refused.value.hint
