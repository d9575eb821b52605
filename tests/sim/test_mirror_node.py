"""The fleet's mirror node serves the stand-in assets over HTTP (Range) and dfss-style SFTP (open/open)."""

from __future__ import annotations

import hashlib
import urllib.request

import paramiko
import pytest

from provision.manifest import load_manifest
from sim import mirror as mirrormod
from tests.sim.conftest import connect, needs_root, run

pytestmark = [pytest.mark.sim, needs_root]


@pytest.fixture
def fleet(tmp_path_factory):
    from sim.fleet import Fleet

    fleet = Fleet.up(tmp_path_factory.mktemp("fleet"), ["se7-factory"], mirror=True)
    yield fleet
    assert fleet.down() == []


def test_manifest_pins_what_the_mirror_serves(fleet):
    manifest = load_manifest(fleet.manifest_path)
    bmodel = manifest.variant("int4").bmodel
    url = fleet.mirror_url + bmodel.dfss
    with urllib.request.urlopen(url) as response:
        data = response.read()
    assert len(data) == bmodel.pinned.size and hashlib.sha256(data).hexdigest() == bmodel.pinned.sha256
    request = urllib.request.Request(url, headers={"Range": "bytes=100-199"})
    with urllib.request.urlopen(request) as response:
        assert response.status == 206 and response.read() == data[100:200]
    assert manifest.kit is not None and manifest.dfss_servers[0].host == fleet.mirror.address


def test_sftp_is_read_only_with_dfss_paths(fleet):
    transport = paramiko.Transport((fleet.mirror.address, 22))
    try:
        keys = paramiko.HostKeys(str(fleet.state.dir / "known_hosts"))
        transport.connect(
            hostkey=keys.lookup(fleet.mirror.address)["ssh-ed25519"], username="open", password="open"
        )
        sftp = paramiko.SFTPClient.from_transport(transport)
        relative = sftp.stat(mirrormod.TOKEN_ZIP).st_size
        absolute = sftp.stat("/" + mirrormod.TOKEN_ZIP).st_size
        assert relative == absolute > 0
        with pytest.raises(PermissionError):
            sftp.open("new-file", "w")
    finally:
        transport.close()


def test_boxes_reach_the_mirror_but_not_beyond(fleet):
    client = connect(fleet, "se7-1")
    url = fleet.mirror_url + mirrormod.TOKEN_ZIP
    code = f"import urllib.request; print(len(urllib.request.urlopen({url!r}).read()))"
    status, out = run(client, f'python3 -c "{code}"')
    assert status == 0 and int(out) > 0
    status, out = run(client, "ip route")  # only the fleet's own subnet: no default route off the machine
    assert "default" not in out
    assert fleet.mirror.name not in [b.name for b in fleet.boxes]
