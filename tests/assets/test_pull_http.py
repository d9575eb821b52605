"""Pull from the simulated HTTP mirror: resume, corruption, servers ignoring Range, lock."""

import pytest

from provision.assets.download import pull, verify
from provision.errors import IntegrityError
from sim.mirror import BMODELS, Faults
from tests.assets.conftest import BMODEL_SIZE, write_manifest

FAST = {"use_dfss": False, "backoff": 0.0}


def test_pull_fetches_verifies_and_pins(tmp_path, tree, mirror, cache):
    manifest, lock = write_manifest(tmp_path, tree, mirrors=[mirror.url])
    report = pull(manifest, ["int4"], cache=cache, lock=lock, **FAST)
    by_id = {f.file_id: f for f in report.files}
    assert set(by_id) == {"bmodel-int4", "token-config", "sail-wheel"}
    assert by_id["bmodel-int4"].sha256 == tree.files[BMODELS["int4"]][1]
    assert by_id["bmodel-int4"].transferred == BMODEL_SIZE
    assert report.lock_updated and lock.path.exists()
    assert "bmodel-int4" in lock.path.read_text()
    link = cache.link_path("glm4-9b-sim", "glm4-9b_int4_1dev.bmodel")
    assert link.is_symlink() and link.read_bytes() == (tree.root / BMODELS["int4"]).read_bytes()
    assert [r.status for r in verify(manifest, ["int4"], cache=cache, lock=lock)] == ["ok"] * 3

    again = pull(manifest, ["int4"], cache=cache, lock=lock, **FAST)
    assert {f.status for f in again.files} == {"cached"}
    assert not again.lock_updated


def test_resume_after_drop_refetches_nothing_twice(tmp_path, tree, mirror, cache):
    manifest, lock = write_manifest(tmp_path, tree, pin=True, mirrors=[mirror.url])
    mirror.faults = Faults(drop_after=(2 << 20) + 12345, path=BMODELS["int4"])
    report = pull(manifest, ["int4"], cache=cache, lock=lock, **FAST)
    result = next(f for f in report.files if f.file_id == "bmodel-int4")
    assert result.attempts == 2
    assert result.transferred == BMODEL_SIZE  # every byte once: the second request started at the drop
    assert mirror.bytes_served(BMODELS["int4"]) == BMODEL_SIZE
    starts = [s.start for s in mirror.log if s.path == BMODELS["int4"]]
    assert starts == [0, (2 << 20) + 12345]


def test_interrupted_part_resumes_in_a_later_pull(tmp_path, tree, mirror, cache):
    manifest, lock = write_manifest(tmp_path, tree, pin=True, mirrors=[mirror.url])
    part = cache.part_path("glm4-9b-sim", "glm4-9b_int4_1dev.bmodel")
    part.parent.mkdir(parents=True)
    part.write_bytes((tree.root / BMODELS["int4"]).read_bytes()[: 3 << 20])
    events = []
    report = pull(manifest, ["int4"], cache=cache, lock=lock, progress=events.append, **FAST)
    result = next(f for f in report.files if f.file_id == "bmodel-int4")
    assert result.resumed_from == 3 << 20
    assert result.transferred == BMODEL_SIZE - (3 << 20)
    assert any(e.phase == "hashing" and e.file_id == "bmodel-int4" for e in events)
    assert not part.exists()


def test_flipped_byte_is_rejected_and_refetched(tmp_path, tree, mirror, cache):
    manifest, lock = write_manifest(tmp_path, tree, pin=True, mirrors=[mirror.url])
    mirror.faults = Faults(flip_at=4242, path=BMODELS["int4"])
    report = pull(manifest, ["int4"], cache=cache, lock=lock, keep_corrupt=True, **FAST)
    result = next(f for f in report.files if f.file_id == "bmodel-int4")
    assert result.attempts == 2 and result.transferred == 2 * BMODEL_SIZE
    assert len(result.set_aside) == 1 and "corrupt" in result.set_aside[0]
    assert result.sha256 == tree.files[BMODELS["int4"]][1]


def test_persistent_corruption_never_reaches_the_cache(tmp_path, tree, mirror, cache):
    manifest, lock = write_manifest(tmp_path, tree, pin=True, mirrors=[mirror.url])
    mirror.faults = Faults(flip_at=10, times=0, path=BMODELS["int4"])
    with pytest.raises(IntegrityError, match="no source delivered the pinned content"):
        pull(manifest, ["int4"], cache=cache, lock=lock, **FAST)
    assert cache.named("glm4-9b-sim", "glm4-9b_int4_1dev.bmodel") is None
    assert not cache.part_path("glm4-9b-sim", "glm4-9b_int4_1dev.bmodel").exists()
    assert not (cache.root / "corrupt").exists()  # not kept unless asked


def test_server_ignoring_range_restarts_cleanly(tmp_path, tree, mirror, cache):
    manifest, lock = write_manifest(tmp_path, tree, pin=True, mirrors=[mirror.url])
    part = cache.part_path("glm4-9b-sim", "glm4-9b_int4_1dev.bmodel")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * (1 << 20))  # a wrong prefix would corrupt the file if appended to
    mirror.faults = Faults(ignore_range=True, times=0)
    report = pull(manifest, ["int4"], cache=cache, lock=lock, **FAST)
    result = next(f for f in report.files if f.file_id == "bmodel-int4")
    assert result.attempts == 1 and result.transferred == BMODEL_SIZE
    assert result.sha256 == tree.files[BMODELS["int4"]][1]


def test_lock_mismatch_is_refused(tmp_path, tree, mirror, cache):
    manifest, lock = write_manifest(tmp_path, tree, mirrors=[mirror.url])
    pull(manifest, ["int4"], cache=cache, lock=lock, **FAST)
    text = lock.path.read_text().replace(tree.files[BMODELS["int4"]][1], "a" * 64)
    lock.path.write_text(text)
    from provision.assets.pins import load_pins

    other = type(cache)(tmp_path / "other-cache")
    with pytest.raises(IntegrityError, match="does not match the pinned"):
        pull(manifest, ["int4"], cache=other, lock=load_pins(manifest), **FAST)
    assert other.named("glm4-9b-sim", "glm4-9b_int4_1dev.bmodel") is None


def test_second_mirror_is_used_when_the_first_lacks_the_file(tmp_path, tree, mirror, cache):
    empty = tmp_path / "empty"
    empty.mkdir()
    manifest, lock = write_manifest(tmp_path, tree, mirrors=[f"file://{empty}", mirror.url])
    report = pull(manifest, ["int8"], cache=cache, lock=lock, **FAST)
    assert {f.source.split("/")[2] for f in report.files} == {mirror.url.split("/")[2]}


def test_local_directory_source(tmp_path, tree, cache):
    manifest, lock = write_manifest(tmp_path, tree, mirrors=[f"file://{tree.root}"])
    report = pull(manifest, ["int4", "int8"], cache=cache, lock=lock, **FAST)
    assert len(report.files) == 4 and {f.status for f in report.files} == {"downloaded"}
