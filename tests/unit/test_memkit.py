"""Finding the memory_edit kit on the controller: local files, the vendor bundle, URLs pinned in the lock."""

import shutil

import pytest

from provision.assets.cache import sha256_file
from provision.assets.pins import default_pins_path
from provision.errors import ConfigError, FleetError
from provision.manifest import MODELS_DIR, load_manifest
from provision.memory.kit import resolve_kit
from provision.settings import load_settings
from sim import kit_archive


@pytest.fixture
def kit(tmp_path):
    return kit_archive.build_kit(tmp_path / "kit")


@pytest.fixture
def manifest(tmp_path):
    """The real manifest, copied so that its lock is written beside the copy."""
    path = tmp_path / "models" / "glm4-9b.yaml"
    path.parent.mkdir()
    shutil.copyfile(MODELS_DIR / "glm4-9b.yaml", path)
    return load_manifest(path)


def test_a_local_tarball_is_used_as_it_is(kit, manifest):
    found = resolve_kit(str(kit.tarball), manifest, load_settings())
    assert found.path == kit.tarball and found.sha256 == sha256_file(kit.tarball)


def test_the_vendor_bundle_yields_its_inner_tarball(kit, manifest):
    found = resolve_kit(str(kit.vendor_bundle), manifest, load_settings())
    assert found.sha256 == sha256_file(kit.tarball)
    assert found.path.name.endswith("memory_edit_v2.12.tar.xz")


def test_not_a_kit_and_missing_files_are_config_errors(tmp_path, manifest):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_kit(str(tmp_path / "nope.tar.xz"), manifest, load_settings())
    junk = tmp_path / "junk.tar.xz"
    junk.write_bytes(b"not an archive")
    with pytest.raises(ConfigError, match="not a readable kit archive"):
        resolve_kit(str(junk), manifest, load_settings())


def test_a_url_is_downloaded_once_and_pinned_in_the_lock(kit, manifest, tmp_path, monkeypatch):
    url = kit.tarball.as_uri()
    first = resolve_kit(url, manifest, load_settings())
    assert first.sha256 == sha256_file(kit.tarball)
    assert "memory-edit-kit" in default_pins_path(manifest).read_text()
    kit.tarball.write_bytes(b"changed upstream")
    again = resolve_kit(url, load_manifest(manifest.source), load_settings())  # from the cache: no download
    assert again.sha256 == first.sha256
    monkeypatch.setenv("SOPHON_FLEET_CACHE", str(tmp_path / "empty-cache"))  # a new download must match
    with pytest.raises(FleetError, match="pinned"):
        resolve_kit(url, load_manifest(manifest.source), load_settings())
