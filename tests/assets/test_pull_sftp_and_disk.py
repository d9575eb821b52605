"""Pull over dfss-style SFTP from a real sshd, and a controller whose disk is full (root only)."""

import os
import shutil
import subprocess

import pytest

from provision.assets.cache import Cache
from provision.assets.download import pull
from provision.assets.pins import load_pins
from provision.errors import DiskFullError
from provision.manifest import load_manifest
from sim.mirror import BMODELS
from sim.sftpd import SftpServer, is_root
from tests.assets.conftest import BMODEL_SIZE, write_manifest

needs_root = pytest.mark.skipif(not is_root() or not os.path.exists("/usr/sbin/sshd"), reason="root + sshd")


def sftp_manifest(directory, tree, servers):
    text = tree.manifest_yaml(pin=True)
    entries = "".join(f"  - {{host: {h}, port: {p}, user: root}}\n" for h, p in servers)
    path = directory / "glm4-9b-sim.yaml"
    path.write_text(text + "dfss_servers:\n" + entries)
    manifest = load_manifest(path)
    return manifest, load_pins(manifest)


@pytest.fixture
def sftpd(tree, tmp_path):
    server = SftpServer(tree.root, tmp_path / "sshd", host="127.0.0.9")
    with server:
        yield server


@needs_root
def test_pull_over_sftp_first_server_that_delivers_wins(tmp_path, tree, sftpd):
    dead = ("127.0.0.9", 1)  # refused at once: the live server must still win
    manifest, lock = sftp_manifest(tmp_path, tree, [dead, ("127.0.0.9", sftpd.port)])
    cache = Cache(tmp_path / "cache")
    known = tmp_path / "dfss_known_hosts"
    report = pull(
        manifest,
        ["int4"],
        cache=cache,
        lock=lock,
        sftp_identity=sftpd.client_key,
        known_hosts=known,
        backoff=0,
    )
    result = next(f for f in report.files if f.file_id == "bmodel-int4")
    assert result.source.startswith("sftp:") and result.sha256 == tree.files[BMODELS["int4"]][1]
    assert f"[127.0.0.9]:{sftpd.port}" in known.read_text()


@needs_root
def test_sftp_resumes_by_seek(tmp_path, tree, sftpd):
    manifest, lock = sftp_manifest(tmp_path, tree, [("127.0.0.9", sftpd.port)])
    cache = Cache(tmp_path / "cache")
    part = cache.part_path("glm4-9b-sim", "glm4-9b_int4_1dev.bmodel")
    part.parent.mkdir(parents=True)
    part.write_bytes((tree.root / BMODELS["int4"]).read_bytes()[: (4 << 20) + 7])
    report = pull(manifest, ["int4"], cache=cache, lock=lock, sftp_identity=sftpd.client_key, backoff=0)
    result = next(f for f in report.files if f.file_id == "bmodel-int4")
    assert result.transferred == BMODEL_SIZE - (4 << 20) - 7
    assert result.sha256 == tree.files[BMODELS["int4"]][1]


@needs_root
def test_changed_host_key_is_refused(tmp_path, tree, sftpd):
    manifest, lock = sftp_manifest(tmp_path, tree, [("127.0.0.9", sftpd.port)])
    known = tmp_path / "dfss_known_hosts"
    other = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    known.write_text(f"[127.0.0.9]:{sftpd.port} ssh-ed25519 {other}\n")
    with pytest.raises(Exception, match="host key changed"):
        pull(
            manifest,
            ["int4"],
            cache=Cache(tmp_path / "c"),
            lock=lock,
            sftp_identity=sftpd.client_key,
            known_hosts=known,
            backoff=0,
        )


@pytest.fixture
def small_tmpfs(tmp_path):
    if not is_root():
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=80m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_before_starting_when_sizes_are_pinned(tmp_path, tree, mirror, small_tmpfs):
    # 80 MiB tmpfs - 64 MiB margin: a 6 MiB file fits, the int4 set (6 MiB + small) fits, big ones do not
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * (12 << 20))
    manifest, lock = write_manifest(tmp_path, tree, pin=True, mirrors=[mirror.url])
    cache = Cache(small_tmpfs / "cache")
    with pytest.raises(DiskFullError, match="needs"):
        pull(manifest, ["int4"], cache=cache, lock=lock, use_dfss=False, backoff=0)
    assert mirror.bytes_served() == 0  # nothing was fetched
    assert cache.named("glm4-9b-sim", "glm4-9b_int4_1dev.bmodel") is None


def test_disk_full_while_writing_keeps_no_partial_as_complete(
    tmp_path, tree, mirror, small_tmpfs, monkeypatch
):
    # A source that announces no size gets past the up-front check; the disk then fills mid-write.
    monkeypatch.setattr("provision.assets.download.ensure_free", lambda *a, **k: None)
    manifest, lock = write_manifest(tmp_path, tree, pin=False, mirrors=[mirror.url])
    cache = Cache(small_tmpfs / "cache")
    free = shutil.disk_usage(small_tmpfs).free
    (small_tmpfs / "filler").write_bytes(b"\0" * (free - (3 << 20)))
    with pytest.raises(DiskFullError, match="disk full"):
        pull(manifest, ["int4"], cache=cache, lock=lock, use_dfss=False, backoff=0, parallel=1)
    assert cache.named("glm4-9b-sim", "glm4-9b_int4_1dev.bmodel") is None
    assert not cache.blob_path(tree.files[BMODELS["int4"]][1]).exists()
    part = cache.part_path("glm4-9b-sim", "glm4-9b_int4_1dev.bmodel")
    assert 0 < part.stat().st_size < BMODEL_SIZE  # kept for a resume, never at a final path
