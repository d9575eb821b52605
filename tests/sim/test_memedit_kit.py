"""The simulated memory_edit.sh keeps the real v2.12 contract (output lines, checks, exit codes) on a box."""

from __future__ import annotations

import hashlib
import subprocess
import tarfile

import pytest

from sim import itb, kit_archive
from tests.sim.conftest import connect, needs_root, run, sudo

pytestmark = [pytest.mark.sim, needs_root]

KIT = "/data/memedit/memory_edit/memory_edit.sh"

DDR_AND_MAX = """\
Info: =======================================================================
Info: get ddr information ...
Info: ddr12_size 8589934592 Byte [8192 MiB]
Info: ddr3_size 4294967296 Byte [4096 MiB]
Info: ddr4_size 4294967296 Byte [4096 MiB]
Info: ddr_size 16384 MiB
Info: =======================================================================
Info: get max memory size ...
Info: max npu size: 0x1dbf00000 [7615 MiB]
Info: max vpu size: 0xbff00000 [3071 MiB]
Info: max vpp size: 0x100000000 [4096 MiB]
"""


@pytest.fixture
def box(sim_fleet):
    """A factory box with the kit unpacked in /data/memedit, owned by linaro (the README's flow)."""
    fleet = sim_fleet(["se7-factory"])
    data = fleet.state.box_paths("se7-1").data
    kit_archive.install_unpacked(data / "memedit")
    subprocess.run(["chown", "-R", "1000:1000", str(data / "memedit")], check=True)
    return fleet, connect(fleet, "se7-1")


def boot_sha(client):
    return run(client, "sha256sum /boot/emmcboot.itb")[1].split()[0]


def test_print_as_linaro_shows_max_and_zero_now(box):
    _, client = box
    status, out = run(client, f"{KIT} -p")
    assert status == 0
    assert out == (
        "INFO: version: 2.12\nInfo: use dts file /data/memedit/memory_edit/output/bm1684x_se7_v1.dts\n"
        + DDR_AND_MAX
        + "Info: =======================================================================\n"
        "Info: get now memory size ...\n"
        "Info: now npu size: 0x0 [0 MiB]\nInfo: now vpu size: 0x0 [0 MiB]\nInfo: now vpp size: 0x0 [0 MiB]\n"
    )


def test_print_under_sudo_shows_the_heaps_now(box):
    _, client = box
    status, out = sudo(client, f"{KIT} -p")
    assert status == 0
    assert out.splitlines()[-3:] == [
        "Info: now npu size: 0xf6e00000 [3950 MiB]",
        "Info: now vpu size: 0x80000000 [2048 MiB]",
        "Info: now vpp size: 0xc0000000 [3072 MiB]",
    ]


@pytest.mark.parametrize(
    "args",
    ["", "-x", "-c -npu 2048 -vpu 2048", "-c -npu 2048 -vpu 0x80000000 -vpp 2048", "-c -vpu 1 -npu 1 -vpp 1"],
)
def test_usage_errors_exit_255(box, args):
    _, client = box
    status, out = run(client, f"{KIT} {args}")
    assert status == 255
    assert out.splitlines()[1] == "Error: Invalid parameters. Please refer to the following example"


@pytest.mark.parametrize(
    ("sizes", "error"),
    [
        ("-npu 7616 -vpu 3071 -vpp 3071", "Error: npu size 0x1dc000000 error"),
        ("-npu 7615 -vpu 3072 -vpp 3072", "Error: vpu size 0xc0000000 error"),  # the README's layout, v2.10+
        ("-npu 0x80000000 -vpu 0x80000000 -vpp 0x100100000", "Error: vpp size 0x100100000 error"),
    ],
)
def test_over_max_is_refused_before_any_change(box, sizes, error):
    _, client = box
    before = boot_sha(client)
    status, out = sudo(client, f"{KIT} -c {sizes}")
    assert status == 255
    assert out.splitlines()[-1] == error
    assert "check edit size ok" not in out
    assert run(client, "ls /boot")[1].split() == ["emmcboot.itb", "multi.its"]  # no .memeditBak either
    assert boot_sha(client) == before


def test_configure_writes_the_image_beside_itself_and_never_touches_boot(box):
    fleet, client = box
    before = boot_sha(client)
    status, out = sudo(client, f"{KIT} -c -npu 2048 -vpu 2048 -vpp 2048")
    assert status == 0, out
    assert out.endswith(
        "Info: =======================================================================\n"
        "Info: output configuration results ...\n"
        "Info: vpu mem area(ddr3): 0x8000000 [128 MiB] 0x20000000 -> 0x27ffffff\n"
        "Info: ion npu mem area(ddr1): 0x80000000 [2048 MiB] 0x24100000 -> 0xa40fffff\n"
        "Info: ion vpu mem area(ddr3): 0x80000000 [2048 MiB] 0x7ff00000 -> 0xffefffff\n"
        "Info: ion vpp mem area(ddr4): 0x80000000 [2048 MiB] 0x80000000 -> 0xffffffff\n"
        "Info: =======================================================================\n"
        "Info: start check memory size ...\n"
        "Info: check npu size: 0x80000000 [2048 MiB]\n"
        "Info: check vpu size: 0x80000000 [2048 MiB]\n"
        "Info: check vpp size: 0x80000000 [2048 MiB]\n"
        "Info: check edit size ok\n"
        "Info: en_emmcfile ok\n"
        "Please reboot the device after running this command for the changes to take effect:\n"
        "sudo cp /data/memedit/memory_edit/emmcboot.itb /boot/emmcboot.itb && sync\n"
    )
    assert boot_sha(client) == before
    assert run(client, "sha256sum /boot/emmcboot.itb.memeditBak")[1].split()[0] == before
    new = (fleet.state.box_paths("se7-1").data / "memedit/memory_edit/emmcboot.itb").read_bytes()
    assert itb.decode(new).heaps == (2048, 2048, 2048)
    sudo(client, "cp /data/memedit/memory_edit/emmcboot.itb /boot/emmcboot.itb")
    fleet.reboot("se7-1")
    assert fleet.hardware("se7-1").heaps == [2048, 2048, 2048]


def test_faults_make_it_fail_or_produce_an_unbootable_image(box):
    fleet, client = box
    fleet.fault("se7-1", "memedit-fails")
    status, out = sudo(client, f"{KIT} -c -npu 7615 -vpu 3071 -vpp 3071")
    assert status == 255 and out.splitlines()[-1] == "Error: en_emmcfile"
    fleet.fault("se7-1", "heal")
    fleet.fault("se7-1", "itb-corrupt")
    status, _ = sudo(client, f"{KIT} -c -npu 7615 -vpu 3071 -vpp 3071")
    assert status == 0
    new = (fleet.state.box_paths("se7-1").data / "memedit/memory_edit/emmcboot.itb").read_bytes()
    with pytest.raises(itb.InvalidImage):
        itb.decode(new)
    fleet.fault("se7-1", "heal")
    fleet.fault("se7-1", "itb-wrong-layout")
    status, out = sudo(client, f"{KIT} -c -npu 7615 -vpu 3071 -vpp 3071")
    assert status == 0 and "Info: check npu size: 0x1dbf00000 [7615 MiB]" in out  # it still says so
    new = (fleet.state.box_paths("se7-1").data / "memedit/memory_edit/emmcboot.itb").read_bytes()
    assert itb.decode(new).heaps == (3807, 1535, 1535)


def test_the_folder_must_be_writable(sim_fleet):
    fleet = sim_fleet(["airbox"])
    client = connect(fleet, "se7-1")
    status, out = run(client, "/opt/sophon/memory_edit/memory_edit.sh -p")
    assert status != 0 and "Permission denied" in out
    status, out = sudo(client, "/opt/sophon/memory_edit/memory_edit.sh -p")
    assert status == 0 and "Info: max npu size: 0x1dbf00000 [7615 MiB]" in out
    assert "output/bm1684x_sm7m_v1.0.dts" in out


def test_kit_archives_are_reproducible_and_laid_out_like_the_vendors(tmp_path):
    first = kit_archive.build_kit(tmp_path / "a")
    second = kit_archive.build_kit(tmp_path / "b")
    for one, two in ((first.tarball, second.tarball), (first.vendor_bundle, second.vendor_bundle)):
        assert hashlib.sha256(one.read_bytes()).digest() == hashlib.sha256(two.read_bytes()).digest()
    with tarfile.open(first.tarball) as tar:
        assert "memory_edit/memory_edit.sh" in tar.getnames()
    with tarfile.open(first.vendor_bundle) as tar:
        assert tar.getnames()[-1] == "DeviceMemoryModificationKit/memory_edit_v2.12.tar.xz"
