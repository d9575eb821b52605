import pytest

from provision.assets.cache import Cache
from provision.assets.pins import load_pins
from provision.manifest import load_manifest
from sim.mirror import BMODELS, Mirror, build_asset_tree

BMODEL_SIZE = 6 << 20  # 6 MiB: several 1 MiB chunks, fast


@pytest.fixture(scope="session")
def tree(tmp_path_factory):
    return build_asset_tree(
        tmp_path_factory.mktemp("mirror"), bmodel_size=BMODEL_SIZE, int8_size=BMODEL_SIZE + 123
    )


@pytest.fixture
def mirror(tree):
    with Mirror(tree.root) as running:
        yield running


@pytest.fixture
def cache(tmp_path):
    return Cache(tmp_path / "cache")


def write_manifest(directory, tree, *, pin=False, mirrors=None):
    path = directory / "glm4-9b-sim.yaml"
    path.write_text(tree.manifest_yaml(pin=pin, mirrors=mirrors))
    manifest = load_manifest(path)
    return manifest, load_pins(manifest)


@pytest.fixture
def int4_rel():
    return BMODELS["int4"]
