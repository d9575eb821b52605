"""The one check for paths a manifest or a box influences."""

from __future__ import annotations

import pytest

from provision.boxpaths import UnsafePath, confined, plain_name, within


@pytest.mark.parametrize(
    "value", ["", "/etc/passwd", "../x", "./../../../backups", "a/../../b", "a\\..\\b", "a\nb", ".", "a/./.."]
)
def test_paths_leaving_their_root_are_refused(value):
    with pytest.raises(UnsafePath):
        confined("/data/sophon-fleet/models", value)


def test_a_relative_path_is_joined_normalised():
    assert confined("/data/x/", "./a//b/c.bmodel") == "/data/x/a/b/c.bmodel"


@pytest.mark.parametrize("value", ["a/b", "..", "-rf", "token_config/"])
def test_a_plain_name_is_one_component(value):
    with pytest.raises(UnsafePath):
        plain_name(value)
    assert plain_name("token_config") == "token_config"


@pytest.mark.parametrize(
    "path", ["/etc/shadow", "/data/sophon-fleet/backups/../locks/x", "/data/sophon-fleet/backupsx"]
)
def test_a_path_read_from_a_box_must_lie_below_its_root(path):
    with pytest.raises(UnsafePath):
        within("/data/sophon-fleet/backups", path)
    assert within("/data/sophon-fleet/backups", "/data/sophon-fleet/backups/emmcboot.itb.1") == (
        "/data/sophon-fleet/backups/emmcboot.itb.1"
    )
