"""The boot image is a real FIT: our writer (sim/itb.py) and parser (provision/memory/bootfit.py) against
U-Boot's dumpimage/mkimage and dtc/fdtget (Debian's u-boot-tools and device-tree-compiler), hostile images,
and the bounded ranged reads the controller decodes a box's image with."""

from __future__ import annotations

import base64
import re
import shutil
import struct
import subprocess

import pytest

from provision.errors import FactError
from provision.memory import bootfit
from provision.memory.bootimage import PAGE, READ_BUDGET, BoxFile, image_layout
from provision.memory.layout import Layout
from sim import itb
from tests.fakes import Reply, ScriptedTransport

DTS = "bm1684x_se7_v1.dtb"
FACTORY = itb.BootImage(DTS, (3950, 2048, 3072))
NO_VPU = itb.BootImage(DTS, (7615, 0, 4095))


def tool(*args: str, cwd=None) -> str:
    """dumpimage, mkimage (u-boot-tools), dtc, fdtget (device-tree-compiler): `make setup` installs them."""
    assert shutil.which(args[0]), f"{args[0]} is missing: run `make setup`"
    return subprocess.run(args, check=True, capture_output=True, text=True, cwd=cwd).stdout


@pytest.mark.parametrize("heaps", [(3950, 2048, 3072), (7615, 3071, 3071), (7615, 0, 4095), (1, 1, 1)])
def test_encode_then_decode_gives_the_same_image(heaps):
    image = itb.BootImage(DTS, heaps)
    raw = itb.encode(image)
    assert itb.decode(raw) == image
    assert raw == itb.encode(image)  # reproducible bytes
    assert len(raw) > itb.KERNEL_SIZE + itb.RAMDISK_SIZE  # bulk, so a partial copy is caught


def test_dumpimage_lists_it_as_a_fit_with_sha256_hashes_we_wrote(tmp_path):
    raw = itb.encode(FACTORY)
    (tmp_path / "emmcboot.itb").write_bytes(raw)
    listing = tool("dumpimage", "-l", str(tmp_path / "emmcboot.itb"))
    assert re.findall(r"Image (\d) \((\S+)\)", listing) == [
        ("0", "kernel-1"),
        ("1", "ramdisk-1"),
        ("2", "fdt-1"),
    ]
    assert "Type:         Flat Device Tree" in listing and "Default Configuration: 'config-1'" in listing
    fit = bootfit.read_fit(lambda o, n: raw[o : o + n], len(raw), len(raw))
    for payload in fit.images.values():
        assert f"Hash value:   {payload.hashes[0][1].hex()}" in listing
    assert fit.images["kernel-1"].offset == itb.DATA_POSITION  # mkimage -p 0x2000


@pytest.mark.parametrize("image", [FACTORY, NO_VPU], ids=["factory", "vpu-deleted"])
def test_the_dtb_dumpimage_extracts_is_ours_and_dtc_reads_the_heaps(tmp_path, image):
    raw = itb.encode(image)
    (tmp_path / "emmcboot.itb").write_bytes(raw)
    tool(
        "dumpimage", "-T", "flat_dt", "-p", "2", "-o", str(tmp_path / "x.dtb"), str(tmp_path / "emmcboot.itb")
    )
    dtb = (tmp_path / "x.dtb").read_bytes()
    assert dtb == itb.fdt(itb.device_tree(image))
    dts = tool("dtc", "-q", "-I", "dtb", "-O", "dts", str(tmp_path / "x.dtb"))
    assert 'compatible = "bitmain,carveout_npu";' in dts and 'file-name = "bm1684x_se7_v1.dtb";' in dts
    npu = tool("fdtget", "-t", "x", str(tmp_path / "x.dtb"), "/reserved-memory/ion_npu_mem", "reg").split()
    size = image.heaps[0] << 20
    assert [int(c, 16) for c in npu] == [1, 0x24100000, size >> 32, size & 0xFFFFFFFF]
    carveouts = tool("fdtget", "-l", str(tmp_path / "x.dtb"), "/bitmain-ion").split()
    regions = tool("fdtget", "-l", str(tmp_path / "x.dtb"), "/reserved-memory").split()
    if image.heaps[1]:
        assert carveouts == ["heap_carveout@0", "heap_carveout@1", "heap_carveout@2"]
        assert "ion_vpu_mem" in regions
    else:  # memory_edit -vpu 0 deletes the heap: no carveout, no region
        assert carveouts == ["heap_carveout@0", "heap_carveout@1"]
        assert "ion_vpu_mem" not in regions
    board = bootfit.read_board(dtb)
    assert {k: size >> 20 for k, (_, size) in board.heaps.items()} == {
        k: mib for k, mib in zip(("npu", "vpu", "vpp"), image.heaps, strict=True) if mib
    }


def test_a_dtb_compiled_by_dtc_from_a_vendor_style_dts_is_read_alike(tmp_path):
    """dtc -> dts -> dtc (what memory_edit's de/en_emmcfile do) gives a dtb our parser reads the same way."""
    (tmp_path / "a.dtb").write_bytes(itb.fdt(itb.device_tree(FACTORY)))
    dts = tool("dtc", "-q", "-I", "dtb", "-O", "dts", str(tmp_path / "a.dtb"))
    dts = dts.replace("reg = <0x01 0x24100000 0x00 0xf6e00000>", "reg = <0x01 0x24100000 0x01 0x00>")  # 4 GiB
    (tmp_path / "b.dts").write_text(dts)
    tool("dtc", "-q", "-I", "dts", "-O", "dtb", "-o", str(tmp_path / "b.dtb"), str(tmp_path / "b.dts"))
    board = bootfit.read_board((tmp_path / "b.dtb").read_bytes())
    assert board.heaps["npu"] == ((1 << 32) + 0x24100000, 4096 << 20)
    assert board.file_name == DTS and len(board.ddr) == 3


@pytest.mark.parametrize("external", [True, False], ids=["mkimage -E -p 0x2000", "mkimage, data embedded"])
def test_a_fit_made_by_the_real_mkimage_is_located_and_verified(tmp_path, external):
    (tmp_path / "Image").write_bytes(itb.filler(300_001, 7))
    (tmp_path / "ramdisk.gz").write_bytes(itb.filler(50_003, 8))
    (tmp_path / "bm1684x_se7_v1.dtb").write_bytes(itb.fdt(itb.device_tree(NO_VPU)))
    (tmp_path / "multi.its").write_text(itb.multi_its(DTS))
    flags = ["-E", "-p", "0x2000"] if external else []
    tool("mkimage", *flags, "-D", "-q -I dts -O dtb -p 500", "-f", "multi.its", "out.itb", cwd=tmp_path)
    raw = (tmp_path / "out.itb").read_bytes()
    assert itb.decode(raw) == NO_VPU
    fit = bootfit.read_fit(lambda o, n: raw[o : o + n], len(raw), len(raw))
    kernel = fit.images["kernel-1"]
    assert raw[kernel.offset : kernel.offset + kernel.size] == itb.filler(300_001, 7)
    assert (kernel.offset == 0x2000) is external


# ---------------------------------------------------------------------------------------------- hostile


def patched(raw: bytes, old: bytes, new: bytes) -> bytes:
    assert raw.count(old) >= 1, old
    return raw.replace(old, new, 1)


def fit_prop(name: str, image: str = "fdt-1") -> int:
    """Offset of the value of property `name` of /images/<image> in the factory image."""
    raw = itb.encode(FACTORY)
    root, _ = bootfit.read_tree(lambda o, n: raw[o : o + n], 0, len(raw))
    return root.child("images").child(image).props[name].offset


def with_u32(raw: bytes, offset: int, value: int) -> bytes:
    return raw[:offset] + struct.pack(">I", value) + raw[offset + 4 :]


RAW = itb.encode(FACTORY)
HOSTILE = {
    "truncated in the kernel": (RAW[: itb.DATA_POSITION + 1000], "past the end of the file"),
    "truncated at the last byte": (RAW[:-1], "past the end of the file"),
    "not a FIT": (b"\0" * 4096 + RAW[4096:], "not a flattened device tree"),
    "huge totalsize": (with_u32(RAW, 4, 0xFFFFFFF0), "FDT size"),
    "strings block outside": (with_u32(RAW, 12, 0x7FFFFFF0), "strings block"),
    "dtb position past the end": (with_u32(RAW, fit_prop("data-position"), 0xFFFFFF00), "past the end"),
    "dtb of 4 GiB": (with_u32(RAW, fit_prop("data-size"), 0xFFFFFFFF), "past the end"),
    "kernel bytes changed": (
        RAW[: itb.DATA_POSITION + 10] + b"X" + RAW[itb.DATA_POSITION + 11 :],
        "mismatch",
    ),
    "unknown hash algorithm": (patched(RAW, b"sha256\0", b"sha999\0"), "unsupported hash"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_or_broken_image_is_refused_with_the_reason(name):
    raw, reason = HOSTILE[name]
    with pytest.raises(itb.InvalidImage, match=re.escape(reason)):
        itb.decode(raw)


def tree(nodes: int = 0) -> itb.Tree:
    return itb.Tree("", [], [itb.Tree(f"n{i}", [], []) for i in range(nodes)])


def nested(levels: int) -> itb.Tree:
    node = itb.Tree("leaf", [], [])
    for i in range(levels):
        node = itb.Tree(f"l{i}", [], [node])
    return itb.Tree("", [], [node])


@pytest.mark.parametrize(
    "blob, reason",
    [
        (itb.fdt(nested(bootfit.MAX_DEPTH + 1)), "levels"),
        (itb.fdt(tree(nodes=bootfit.MAX_NODES + 1)), "nodes"),
        (itb.fdt(tree())[:-8], "truncated"),
        (with_u32(itb.fdt(itb.Tree("", [("a", b"x" * 8)], [])), 0x38 + 12, 0x7FFFFFFF), "runs past"),
        (with_u32(itb.fdt(itb.Tree("", [("a", b"x" * 8)], [])), 0x38 + 16, 0x7FFF), "outside the strings"),
        (with_u32(itb.fdt(tree()), 0x38, 7), "unknown FDT token"),
    ],
    ids=["too deep", "too many nodes", "cut short", "value past the block", "bad name offset", "bad token"],
)
def test_hostile_trees_end_in_a_format_error(blob, reason):
    with pytest.raises(bootfit.FormatError, match=reason):
        bootfit.read_tree(lambda o, n: blob[o : o + n], 0, bootfit.MAX_DTB)


def board_with(mutate) -> bytes:
    root = itb.device_tree(FACTORY)
    mutate(root)
    return itb.fdt(root)


def reserved(root: itb.Tree, name: str) -> itb.Tree:
    pool = next(c for c in root.children if c.name == "reserved-memory")
    return next(c for c in pool.children if c.name == name)


def prop(root: itb.Tree, region: str, index: int, value: tuple[str, bytes]) -> None:
    reserved(root, region).props[index] = value


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (
            lambda r: reserved(r, "ion_vpu_mem").props.__setitem__(2, ("phandle", itb.cells(99))),
            "names no node",
        ),
        (
            lambda r: reserved(r, "ion_vpp_mem").props.__setitem__(0, itb.reg(4 << 32, 1 << 40)),
            "not inside a DDR",
        ),
        (lambda r: reserved(r, "arm_mem").props.append(("phandle", itb.cells(4))), "used twice"),
        (lambda r: r.children.pop(), "no bitmain-ion node"),
        (
            lambda r: reserved(r, "ion_npu_mem").props.__setitem__(0, ("reg", itb.cells(1, 2, 3))),
            "does not fit",
        ),
    ],
    ids=["dangling phandle", "heap larger than the DDR", "duplicate phandle", "no ion node", "odd reg"],
)
def test_a_dtb_that_does_not_add_up_is_refused(mutate, reason):
    with pytest.raises(bootfit.FormatError, match=reason):
        bootfit.read_board(board_with(mutate))


# ---------------------------------------------------------------------------------------------- on a box


def page_replies(path: str, raw: bytes) -> list[Reply]:
    """What the box prints for BoxFile's reads of `raw` at `path`: the head (stat + page 0), then one page."""
    replies = [
        Reply(re.escape(f"{path} {PAGE}") + "$", f"{len(raw)}\n" + base64.b64encode(raw[:PAGE]).decode())
    ]
    for page in range(1, len(raw) // PAGE + 1):
        chunk = base64.b64encode(raw[page * PAGE : (page + 1) * PAGE]).decode()
        replies.append(Reply(re.escape(f"{path} {PAGE} {page} 1") + "$", chunk))
    return replies


def test_the_controller_reads_the_fit_head_and_the_dtb_only():
    raw = itb.encode(NO_VPU)
    box = ScriptedTransport(page_replies("/boot/emmcboot.itb", raw))
    assert image_layout(box, "/boot/emmcboot.itb") == Layout(7615, 0, 4095)
    assert len(box.commands) == 2 and all(sudo for _, sudo, _ in box.calls)  # the head, then the dtb's page
    assert len(raw) > 4 * PAGE


def test_a_hostile_image_on_a_box_is_unlabelled_after_a_bounded_read():
    """An embedded-data FIT whose kernel is 8 MiB of properties: the walk needs more than the budget."""
    props = [("p", b"\0" * 60) for _ in range((8 << 20) // 72)]
    image = itb.Tree("kernel-1", props, [])
    raw = itb.fdt(itb.Tree("", [], [itb.Tree("images", [], [image])]))
    box = ScriptedTransport(page_replies("/data/x.itb", raw))
    with pytest.raises(FactError, match="more than 4 MiB"):
        image_layout(box, "/data/x.itb")
    blob = BoxFile(ScriptedTransport(page_replies("/data/x.itb", raw)), "/data/x.itb")
    with pytest.raises(bootfit.FormatError):
        blob.read(0, len(raw))
    assert blob.fetched <= READ_BUDGET


# ---------------------------------------------------------------------------------------------- state


def test_records_only_cross_check_the_decoded_layout():
    """The layout shown is the image's; a verified-boot record or a backup's .json saying otherwise is
    flagged, and an image the box did not boot (copied in by hand) makes /boot pending."""
    from provision.cli.memory_view import backups_json
    from provision.memory.bootimage import Backup, BootState

    backup = Backup(
        "/data/sophon-fleet/backups/emmcboot.itb.20261201T120000Z", "aa" * 32, Layout(1, 2, 3), "x"
    )
    state = BootState(
        boot_id="b",
        boot_sha="bb" * 32,
        booted_sha=None,
        booted_heaps=Layout(3950, 2048, 3072),
        labels={"aa" * 32: Layout(7615, 3071, 3071), "bb" * 32: Layout(7615, 3071, 3071)},
        backups=(backup,),
        unreadable={},
        recorded={"aa" * 32: Layout(1, 2, 3)},
    )
    doc = backups_json("se7-1", state)
    (shown,) = doc["backups"]
    assert shown["layout"] == [7615, 3071, 3071] and shown["recorded_layout"] == [1, 2, 3]
    assert shown["records_disagree"] is True and doc["boot"]["records_disagree"] is False
    assert state.pending and "from an image no longer in /boot" in state.describe()
