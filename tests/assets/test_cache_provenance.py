"""A cached blob is served only for an entry that pins it, or that it was downloaded from; never by name."""

import pytest

from provision.assets.cache import Cache
from provision.assets.download import pin, pull, verify
from provision.assets.pins import PinEntry, default_pins_path, load_pins
from provision.errors import FleetError
from provision.manifest import MODELS_DIR, load_manifest
from provision.memory.kit import resolve_kit
from provision.settings import load_settings
from sim import kit_archive
from sim.mirror import SIM_MODEL, Mirror
from tests.assets.conftest import write_manifest


def test_unpinned_lookup_needs_the_entrys_own_source(tmp_path, tree, mirror, cache):
    manifest, pins = write_manifest(tmp_path, tree, mirrors=[mirror.url])
    pull(manifest, ["int4"], cache=cache, lock=pins, use_dfss=False)
    bmodel = manifest.files["bmodel-int4"]
    origin = cache.origin(manifest.model, bmodel.path)
    assert origin is not None and origin.startswith(mirror.url)
    assert cache.lookup(manifest.model, bmodel.path, None, [origin]) is not None
    assert cache.lookup(manifest.model, bmodel.path, None, ["http://elsewhere/x"]) is None
    assert cache.lookup(manifest.model, bmodel.path, None) is None  # by name alone: never
    assert cache.lookup(manifest.model, bmodel.path, "0" * 64) is None  # pinned to other bytes


def test_pin_refuses_a_cached_file_from_another_source(tmp_path, tree, mirror, cache):
    manifest, pins = write_manifest(tmp_path, tree, mirrors=[mirror.url])
    pull(manifest, ["int4"], cache=cache, lock=pins, use_dfss=False)
    default_pins_path(manifest).unlink()  # pins lost; the cache still holds the files
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    (elsewhere / "glm4-9b-sim.yaml").write_text(tree.manifest_yaml(mirrors=["http://127.0.0.1:9/other"]))
    other = load_manifest(elsewhere / "glm4-9b-sim.yaml")  # same model and file names, other sources
    try:
        pin(other, ["int4"], cache=cache, lock=load_pins(other))
    except FleetError as exc:
        assert "not in the cache" in exc.message
    else:
        raise AssertionError("a file downloaded from other sources was pinned")
    assert {r.status for r in verify(other, ["int4"], cache=cache, lock=load_pins(other))} == {"missing"}
    assert pin(manifest, ["int4"], cache=cache, lock=load_pins(manifest), mirrors=()) != []


def test_the_real_glm4_9b_never_resolves_to_a_simulator_file(tmp_path, tree):
    """The stand-ins and the sim's memory_edit kit, pulled into the user's cache and home, are invisible
    to the shipped glm4-9b manifest: other model name, other pins file, other sources."""
    settings = load_settings()
    cache = Cache(settings.cache_dir)
    kit = kit_archive.build_kit(tmp_path / "kit")
    with Mirror(tree.root) as mirror:
        sim_manifest, sim_pins = write_manifest(tmp_path, tree, mirrors=[mirror.url])
        assert sim_manifest.model == SIM_MODEL
        pull(sim_manifest, list(sim_manifest.variants), cache=cache, lock=sim_pins, use_dfss=False)
    resolve_kit(kit.tarball.as_uri(), sim_manifest, settings)  # the sim's kit, cached and pinned
    assert cache.named(SIM_MODEL, kit.tarball.name) is not None
    real = load_manifest(MODELS_DIR / "glm4-9b.yaml")
    real_pins = load_pins(real)
    assert real_pins.entries == {} and real_pins.path != sim_pins.path
    entries = [*real.files.values(), *([real.kit] if real.kit else [])]
    assert any(f.path == kit.tarball.name for f in entries)  # the same file name as the sim's kit
    for file in entries:
        sha = real_pins.expected(file).sha256
        assert cache.lookup(real.model, file.path, sha, [cache.origin(SIM_MODEL, file.path) or "-"]) is None
        assert cache.named(real.model, file.path) is None
    assert {r.status for r in verify(real, list(real.variants), cache=cache, lock=real_pins)} == {"missing"}


def test_pull_repairs_a_name_link_left_by_another_pin_or_deleted(tmp_path, tree, mirror, cache):
    """What pull calls cached is the blob the pin in force names, and the file's name
    in the cache is made to point at it again (it was left at another pin's blob, or deleted)."""
    manifest, pins = write_manifest(tmp_path, tree, pin=True, mirrors=[mirror.url])
    pull(manifest, ["int4"], cache=cache, lock=pins, use_dfss=False)
    bmodel = manifest.files["bmodel-int4"]
    want = pins.expected(bmodel)
    link = cache.link_path(manifest.model, bmodel.path)
    other = cache.blob_path("f" * 64)
    other.write_bytes(b"another pin's bytes")
    link.unlink()
    link.symlink_to(other)  # as after a pull under a pin of another size for the same name

    results = pull(manifest, ["int4"], cache=cache, lock=pins, use_dfss=False)

    assert {r.status for r in results.files} == {"cached"}
    assert link.resolve() == cache.blob_path(want.sha256)
    assert cache.named(manifest.model, bmodel.path).sha256 == want.sha256
    link.unlink()  # deleted by hand
    pull(manifest, ["int4"], cache=cache, lock=pins, use_dfss=False)
    assert link.resolve() == cache.blob_path(want.sha256)
    assert {r.status for r in verify(manifest, ["int4"], cache=cache, lock=pins)} == {"ok"}


def test_pull_under_another_pin_for_the_same_name_is_not_cached(tmp_path, tree, mirror, cache):
    """The adversarial run: a file pulled under one pin, then a pins file naming another size for it.
    Pull must not say "cached" (it did, exit 0, while push and verify exited 5)."""
    manifest, pins = write_manifest(tmp_path, tree, mirrors=[mirror.url])  # pinned on first download
    pull(manifest, ["int4"], cache=cache, lock=pins, use_dfss=False)
    bmodel = manifest.files["bmodel-int4"]
    want = pins.expected(bmodel)
    pins.entries[bmodel.id] = PinEntry(path=bmodel.path, size=want.size + 1, sha256="e" * 64)

    with pytest.raises(FleetError, match="pinned"):
        pull(manifest, ["int4"], cache=cache, lock=pins, use_dfss=False)
    statuses = {r.file_id: r.status for r in verify(manifest, ["int4"], cache=cache, lock=pins)}
    assert statuses["bmodel-int4"] == "missing"
