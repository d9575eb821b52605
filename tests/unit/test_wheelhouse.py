"""The offline wheelhouse for the boxes (downloads from PyPI once; the cache makes the second call free)."""

import pytest

from provision.errors import FleetError
from provision.runtime.wheelhouse import ensure_wheelhouse, python_tag


def test_aarch64_py38_wheelhouse_has_the_runtime_deps_and_is_cached(tmp_path):
    house = ensure_wheelhouse(tmp_path, "aarch64", "3.8.2")
    names = [w.name for w in house.wheels]
    assert any(n.startswith("numpy-1.24.4-cp38-cp38-") and "aarch64" in n for n in names)
    assert any(n.startswith("tiktoken-0.7.0-cp38-cp38-") for n in names)
    assert all((house.dir / n).stat().st_size == w.size for n, w in zip(names, house.wheels, strict=True))
    index = house.dir / "wheelhouse.json"
    before = index.stat().st_mtime_ns
    again = ensure_wheelhouse(tmp_path, "aarch64", "3.8.18")
    assert again.key == house.key and index.stat().st_mtime_ns == before
    assert not list(house.dir.parent.glob("*.part-*"))


def test_unknown_architecture_is_refused(tmp_path):
    with pytest.raises(FleetError, match="no wheels for the box architecture 'riscv64'"):
        ensure_wheelhouse(tmp_path, "riscv64", "3.8.2")


def test_python_tag():
    assert python_tag("3.8.18") == "38"
