"""The boot image on a box: read its sha256, back it up verified, swap a new one in atomically, read heaps.

    /boot/emmcboot.itb                     what the box boots (the vendor's memory_edit never writes it)
    /boot/emmcboot.itb.memeditBak          memory_edit's own copy of the previous image
    /boot/.emmcboot.itb.sophon-fleet.tmp   our copy during a swap (verified, then renamed over the image)
    /data/sophon-fleet/backups/emmcboot.itb.<UTC time>{,.sha256,.json}   verified backups + their layout

Which layout an image boots with is read from the image itself (`image_layout`): the FIT structure at its
start, then its dtb at the position the FIT gives (two ranged reads of 64 KiB pages, at most 4 MiB per image,
never the whole ~40 MB), parsed by `bootfit`. Records kept on the box (what a verified boot ran) only
cross-check it.

Why the backup lives on /data and not beside `.memeditBak` in /boot: /boot is a small FAT partition that
already holds the image, the vendor script's `.memeditBak` and, during the swap, our temporary copy; /data is
the large ext4 partition that survives reboots. The first backup (the factory image) and the two newest are
kept.
"""

from __future__ import annotations

import binascii
import json
import time
from base64 import b64decode
from dataclasses import dataclass, field
from typing import Any

from provision.boxpaths import BACKUP_DIR, BOOT_IMAGE, UnsafePath, within
from provision.errors import DiskFullError, FactError, IntegrityError, RemoteError
from provision.facts.parse import parse_total_mem
from provision.memory import bootfit
from provision.memory.layout import MIB, Layout
from provision.ssh.transport import Transport, quote_command

SWAP_TMP = "/boot/.emmcboot.itb.sophon-fleet.tmp"
MEMEDIT_BAK = "/boot/emmcboot.itb.memeditBak"
COPY_TIMEOUT = 300.0  # a ~40 MB image copied, synced and hashed on eMMC
KEEP_BACKUPS = 3  # the first one (factory image) and the two newest


@dataclass(frozen=True)
class Backup:
    """A saved boot image on the box: `path`, `path.sha256` (sha256sum format) and `path.json`."""

    path: str
    sha256: str
    layout: Layout | None
    created: str

    def to_json(self) -> dict[str, object]:
        layout = [self.layout.npu, self.layout.vpu, self.layout.vpp] if self.layout else None
        return {"path": self.path, "sha256": self.sha256, "layout": layout, "created": self.created}


def sha256_on_box(transport: Transport, path: str) -> str | None:
    """sha256 of a file on the box (read as root), or None when it cannot be read."""
    result = transport.run(["sha256sum", "--", path], sudo=True, check=False)
    return result.stdout.split()[0] if result.ok and result.stdout.split() else None


# ---------------------------------------------------------------------------------------------- labels

PAGE = 64 * 1024  # one ranged read: the FIT structure of an image with external data fits in the first
READ_BUDGET = 4 << 20  # bytes read from one image at most (a dtb is ~60 KiB, the whole image ~40 MB)


class BoxFile:
    """Ranged reads of one file on a box, as root, in `PAGE`-sized pages (`dd | base64`), at most
    `READ_BUDGET` bytes in all: what `bootfit` parses an image from without copying it."""

    def __init__(self, transport: Transport, path: str) -> None:
        self.transport, self.path = transport, path
        self.pages: dict[int, bytes] = {}
        self.fetched = 0
        script = 'stat -c %s -- "$1" && dd if="$1" bs="$2" count=1 status=none | base64 -w0'
        out = self._run(script, str(PAGE)).split("\n", 1)
        if not out[0].strip().isdigit():
            raise RemoteError(f"{transport.host.name}: cannot read {path}")
        self.size = int(out[0])
        self.pages[0] = self._decode(out[1] if len(out) > 1 else "")

    def read(self, offset: int, length: int) -> bytes:
        """The bytes at offset..offset+length (fewer at the end of the file). Raises bootfit.FormatError
        when that would read more than the budget."""
        end = min(offset + max(length, 0), self.size)
        if offset < 0 or offset >= end:
            return b""
        first, last = offset // PAGE, (end - 1) // PAGE
        missing = [p for p in range(first, last + 1) if p not in self.pages]
        if missing:
            count = missing[-1] - missing[0] + 1
            if self.fetched + count * PAGE > READ_BUDGET:
                raise bootfit.FormatError(
                    f"reading it would take more than {READ_BUDGET >> 20} MiB (data at {offset}+{length})"
                )
            script = 'dd if="$1" bs="$2" skip="$3" count="$4" status=none | base64 -w0'
            data = self._decode(self._run(script, str(PAGE), str(missing[0]), str(count)))
            for i in range(count):
                self.pages[missing[0] + i] = data[i * PAGE : (i + 1) * PAGE]
        if first == last:  # most reads (a token, a name) sit in one page: slice it, copy nothing more
            return self.pages[first][offset - first * PAGE : end - first * PAGE]
        data = b"".join(self.pages.get(p, b"") for p in range(first, last + 1))
        return data[offset - first * PAGE : end - first * PAGE]

    def _run(self, script: str, *args: str) -> str:
        words = ["sh", "-c", script, "sh", self.path, *args]
        result = self.transport.run(quote_command(words), sudo=True, check=False)
        if not result.ok:
            raise RemoteError(f"{self.transport.host.name}: cannot read {self.path}: {result.stderr.strip()}")
        return result.stdout

    def _decode(self, text: str) -> bytes:
        try:
            data = b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise FactError(f"{self.transport.host.name}: reading {self.path} gave garbage") from None
        self.fetched += len(data)
        return data


def image_layout(transport: Transport, path: str, dts: str | None = None) -> Layout:
    """The heaps the boot image at `path` on the box boots with, decoded from its bytes: the FIT's dtb
    (the box's `dts` when the image holds several), its hash checked, its bitmain-ion heaps (a heap that
    has no heap_carveout node is deleted: 0).

    Raises:
        FactError: not a boot image this tool can read (hostile offsets or sizes, truncated, a wrong hash,
            no bitmain-ion node), with the reason; at most READ_BUDGET bytes were read.
        RemoteError: the file cannot be read.
    """
    blob = BoxFile(transport, path)
    try:
        fit = bootfit.read_fit(blob.read, blob.size, blob.size)
        fdt = bootfit.pick_fdt(fit, dts)
        if fdt.size > bootfit.MAX_DTB:
            raise bootfit.FormatError(f"its dtb {fdt.name} claims {fdt.size} bytes")
        dtb = blob.read(fdt.offset, fdt.size)
        bootfit.check_hashes(fdt, dtb)
        board = bootfit.read_board(dtb)
    except bootfit.FormatError as exc:
        raise FactError(
            f"{transport.host.name}: {path} is not a boot image this tool can read: {exc}"
        ) from None
    return Layout(*(board.heaps[k][1] // MIB if k in board.heaps else 0 for k in ("npu", "vpu", "vpp")))


def make_backup(transport: Transport, current_sha: str, layout: Layout | None) -> Backup:
    """Copy the current boot image (whose sha256 is `current_sha`) to /data/sophon-fleet/backups with its
    sha256 and its layout as decoded from it (`BootState.label`; None: it could not be read, never
    assumed), verified. Raises IntegrityError when the copy cannot be written or verified."""
    name = transport.host.name
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = f"{BACKUP_DIR}/emmcboot.itb.{stamp}"
    backup = Backup(path, current_sha, layout, stamp)
    meta = json.dumps({**backup.to_json(), "host": name}, sort_keys=True)
    script = (
        'set -e; mkdir -p "$(dirname "$1")"; cp -- /boot/emmcboot.itb "$1.part"; sync; '
        'got=$(sha256sum "$1.part" | cut -d" " -f1); '
        'if [ "$got" != "$2" ]; then rm -f "$1.part"; echo "mismatch $got"; exit 3; fi; '
        'mv -- "$1.part" "$1"; printf "%s  %s\\n" "$2" "$(basename "$1")" > "$1.sha256"; '
        'printf "%s\\n" "$3" > "$1.json"; sync; '
        # keep the first backup ever (the factory image) and the newest ones (~40 MB each on a real box)
        f'ls -1 "$(dirname "$1")"/emmcboot.itb.*.json | sort | sed 1d | head -n -{KEEP_BACKUPS - 1} | '
        'while read -r meta; do base=${meta%.json}; rm -f -- "$base" "$base.sha256" "$meta"; done; echo ok'
    )
    out = transport.run(quote_command(["sh", "-c", script, "sh", path, backup.sha256, meta]), check=False)
    if out.stdout.strip() != "ok":
        raise IntegrityError(
            f"{name}: the backup of {BOOT_IMAGE} could not be written and verified: "
            f"{(out.stdout + out.stderr).strip()}",
            hint="check free space on /data",
        )
    return backup


SWAP_SCRIPT = """set -e
src=$1; want=$2; tmp=$3; dst=$4
need=$(( $(stat -c %s "$src") / 1024 + 1024 ))
avail=$(df -Pk "$(dirname "$dst")" | awk 'NR==2 {print $4}')
if [ "$avail" -lt "$need" ]; then echo "nospace $avail $need"; exit 4; fi
cp -- "$src" "$tmp"; sync
got=$(sha256sum "$tmp" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then rm -f "$tmp"; echo "copy-mismatch $got"; exit 3; fi
mv -f -- "$tmp" "$dst"; sync
echo "swapped $(sha256sum "$dst" | cut -d' ' -f1)"
"""


def check_boot_room(transport: Transport) -> None:
    """/boot (a small FAT partition) must hold a second image beside the current one during a swap: refuse
    before anything is written when it cannot (the swap itself checks again).

    Raises:
        DiskFullError: with the KiB free and needed.
    """
    script = (
        f"need=$(( $(stat -c %s {BOOT_IMAGE}) / 1024 + 1024 )); "
        "avail=$(df -Pk /boot | awk 'NR==2 {print $4}'); echo \"$avail $need\""
    )
    words = transport.run(script, sudo=True).stdout.split()
    if len(words) == 2 and all(w.isdigit() for w in words) and int(words[0]) < int(words[1]):
        raise DiskFullError(
            f"{transport.host.name}: /boot has {words[0]} KiB free, a swap needs {words[1]} KiB "
            f"(a copy of the new image beside {BOOT_IMAGE}); nothing was changed",
            hint="free space in /boot (old copies such as emmcboot.itb.memeditBak can go once verified)",
        )


def swap_in(transport: Transport, source: str, sha256: str) -> None:
    """Replace /boot/emmcboot.itb by `source` atomically (temp copy, sync, verify, rename, sync, read back).
    Raises DiskFullError / IntegrityError; /boot/emmcboot.itb is then the old image, or — only when the
    read-back differs — whatever the rename put there (reported)."""
    name = transport.host.name
    result = transport.run(
        quote_command(["sh", "-c", SWAP_SCRIPT, "sh", source, sha256, SWAP_TMP, BOOT_IMAGE]),
        sudo=True,
        timeout=COPY_TIMEOUT,
        check=False,
    )
    words = result.stdout.split()
    if words[:1] == ["nospace"]:
        raise DiskFullError(f"{name}: /boot has {words[1]} KiB free, the new image needs {words[2]} KiB")
    if words[:1] == ["copy-mismatch"]:
        raise IntegrityError(f"{name}: the copy in /boot has sha256 {words[1]}, not {sha256}; removed")
    if words[:1] != ["swapped"] or not result.ok:
        raise RemoteError(f"{name}: the swap failed: {(result.stdout + result.stderr).strip()}")
    if words[1] != sha256:
        raise IntegrityError(f"{name}: {BOOT_IMAGE} reads back as {words[1]}, not {sha256}")


# `npu <bytes>` per heap; `absent` when ion is there but the heap is not (deleted with memory_edit `-vpu 0`:
# the box registers no such heap), `?` when it cannot be read
HEAPS_SCRIPT = (
    "for k in npu vpu vpp; do d=/sys/kernel/debug/ion/bm_${k}_heap_dump; "
    'if v=$(cat "$d/total_mem" 2>/dev/null); then echo "$k $v"; '
    'elif [ -d /sys/kernel/debug/ion ] && [ ! -e "$d" ]; then echo "$k absent"; else echo "$k ?"; fi; done'
)


def read_heaps(transport: Transport) -> Layout:
    """Heap sizes now, from debugfs as root; a deleted heap reads as 0."""
    return parse_total_mem(transport.run(HEAPS_SCRIPT, sudo=True).stdout)


def latest_backup(transport: Transport) -> Backup:
    """The newest backup sophon-fleet made on this box. Raises RemoteError when there is none."""
    return find_backup(transport, list_backups(transport), None)


# ---------------------------------------------------------------------------------------------- records
#
# What the tool knows about boot images on a box, so that every run starts from what /boot really holds:
#     backups/boots/<boot_id>.json   {"boot_id", "boot_sha", "heaps", "at"}: what /boot held and the heaps
#                                    the first time a run looked during that boot (before changing anything);
#                                    boot_sha is null when /boot then already held an image whose decoded
#                                    layout is not what the box runs (copied in after the boot)
#     backups/images/<sha256>.json   {"sha256", "layout", "how", "at"}: the heaps a verified boot of that
#                                    image ran with: a cross-check of the layout decoded from the image
IMAGES_DIR = f"{BACKUP_DIR}/images"
BOOTS_DIR = f"{BACKUP_DIR}/boots"
_MARK = "@@sophon-fleet-records:"
_STATE_SCRIPT = f"""b=$(cat /proc/sys/kernel/random/boot_id)
echo "{_MARK}boot_id"; echo "$b"
echo "{_MARK}boot_sha"; sha256sum {BOOT_IMAGE} 2>/dev/null | cut -d' ' -f1
echo "{_MARK}dts"; {{ tr -d '\\0' < /proc/device-tree/info/file-name || \
  tr -d '\\0' < /sys/firmware/devicetree/base/info/file-name; }} 2>/dev/null; echo
echo "{_MARK}boot"; cat "{BOOTS_DIR}/$b.json" 2>/dev/null
for f in {IMAGES_DIR}/*.json; do [ -f "$f" ] && {{ echo "{_MARK}image"; cat "$f"; }}; done
"""
_BACKUPS_SCRIPT = (
    f'for f in {BACKUP_DIR}/emmcboot.itb.*.json; do [ -f "$f" ] && {{ echo "{_MARK}backup $f"; cat "$f"; }}; '
    "done\n"
)


@dataclass(frozen=True)
class BootState:
    """What /boot holds now and what the box booted with; each image's layout decoded from its bytes."""

    boot_id: str
    boot_sha: str | None  # /boot/emmcboot.itb now
    booted_sha: str | None  # what /boot held at the first look during this boot (None: unknown)
    booted_heaps: Layout | None
    labels: dict[str, Layout]  # image sha256 -> the layout decoded from the image (/boot's and the backups')
    backups: tuple[Backup, ...]  # oldest first (the first one is the factory image)
    unreadable: dict[str, str] = field(default_factory=dict)  # image sha256 -> why it could not be decoded
    recorded: dict[str, Layout] = field(default_factory=dict)  # image sha256 -> what the records say

    @property
    def pending(self) -> bool:
        """/boot changed after the box booted (an earlier run swapped in an image and did not reboot, or an
        image was copied in by hand: its decoded layout is not what the box runs)."""
        if self.boot_sha is None:
            return False
        if self.booted_sha is not None:
            return self.boot_sha != self.booted_sha
        now = self.label(self.boot_sha)
        return None not in (now, self.booted_heaps) and now != self.booted_heaps

    def label(self, sha: str | None) -> Layout | None:
        """The layout the image `sha` boots with, decoded from it; None when it could not be read (never
        assumed)."""
        return self.labels.get(sha) if sha is not None else None

    def disagreements(self) -> dict[str, tuple[Layout, Layout]]:
        """Images whose records (a verified boot, a backup's .json) say another layout than their bytes:
        sha256 -> (decoded, recorded)."""
        return {
            sha: (self.labels[sha], layout)
            for sha, layout in self.recorded.items()
            if sha in self.labels and self.labels[sha] != layout
        }

    def backup_of(self, sha: str | None) -> Backup | None:
        """The newest backup holding the image `sha`."""
        return next((b for b in reversed(self.backups) if b.sha256 == sha), None)

    def describe(self) -> str:
        now = self.label(self.boot_sha)
        why = self.unreadable.get(self.boot_sha or "")
        text = f"/boot holds {(self.boot_sha or '?')[:12]} ({now or 'layout unknown'})"
        if now is None and why:
            text += f": {why}"
        if self.pending:
            running = (
                f"from {self.booted_sha[:12]}" if self.booted_sha else "from an image no longer in /boot"
            )
            text += f", written after this boot; the box runs {self.booted_heaps or '?'} {running}"
            text += " until it reboots"
        return text


def read_boot_state(transport: Transport, heaps_now: Layout | None) -> BootState:
    """What /boot holds, the records, every backup, and the layout decoded from each of those images. The
    first look during a boot is recorded (what /boot held, and `heaps_now`), before anything changes."""
    sections = _sections(transport.run(_STATE_SCRIPT + _BACKUPS_SCRIPT + "true", sudo=True).stdout)
    boot_id = (sections.get("boot_id") or [""])[0].strip()
    boot_sha = (sections.get("boot_sha") or [""])[0].strip() or None
    dts = (sections.get("dts") or [""])[0].strip() or None
    boot = _json((sections.get("boot") or [""])[0])
    backups = tuple(
        sorted(
            (b for b in (_backup(transport, text) for text in sections.get("backup", [])) if b is not None),
            key=lambda b: b.created,
        )
    )
    recorded = {b.sha256: b.layout for b in backups if b.layout is not None}
    for text in sections.get("image", []):
        record = _json(text)
        layout = _layout_field(record.get("layout"))
        if isinstance(record.get("sha256"), str) and layout is not None:
            recorded[record["sha256"]] = layout
    images = [(boot_sha, BOOT_IMAGE)] + [(b.sha256, b.path) for b in backups]
    labels, unreadable = decode_images(transport, images, dts)
    booted_sha: str | None
    if boot.get("boot_id"):
        booted_sha, booted_heaps = boot.get("boot_sha") or None, _layout_field(boot.get("heaps"))
    else:
        booted_sha, booted_heaps = boot_sha, heaps_now
        now = labels.get(boot_sha or "")
        if None not in (now, heaps_now) and now != heaps_now:
            booted_sha = None  # /boot already holds an image the box did not boot (copied in by hand)
        if boot_id and boot_sha:
            _write_record(
                transport,
                f"{BOOTS_DIR}/{boot_id}.json",
                {"boot_id": boot_id, "boot_sha": booted_sha, "heaps": _layout_list(heaps_now)},
            )
    return BootState(boot_id, boot_sha, booted_sha, booted_heaps, labels, backups, unreadable, recorded)


def decode_images(
    transport: Transport, images: list[tuple[str | None, str]], dts: str | None
) -> tuple[dict[str, Layout], dict[str, str]]:
    """(sha256, path) of images on the box -> the layouts decoded from them, and why the others could not
    be read (each image once)."""
    labels: dict[str, Layout] = {}
    unreadable: dict[str, str] = {}
    for sha, path in images:
        if sha is None or sha in labels or sha in unreadable:
            continue
        try:
            labels[sha] = image_layout(transport, path, dts)
        except RemoteError as exc:  # FactError included: a hostile or foreign image is only unlabelled
            unreadable[sha] = exc.message.split(": ", 1)[-1]
    return labels, unreadable


def record_image(transport: Transport, sha: str, layout: Layout, *, how: str) -> None:
    """Note that the image `sha` boots with `layout` (`how` we know: memory_edit's check, a verified boot)."""
    _write_record(
        transport, f"{IMAGES_DIR}/{sha}.json", {"sha256": sha, "layout": _layout_list(layout), "how": how}
    )


def record_boot(transport: Transport, boot_id: str, sha: str, heaps: Layout) -> None:
    """What a verified boot runs: recorded like a first look, so the next run knows it booted `sha`."""
    _write_record(
        transport,
        f"{BOOTS_DIR}/{boot_id}.json",
        {"boot_id": boot_id, "boot_sha": sha, "heaps": _layout_list(heaps)},
    )


def list_backups(transport: Transport) -> tuple[Backup, ...]:
    """Every backup on the box, oldest (the factory image) first."""
    script = _BACKUPS_SCRIPT + "true"
    sections = _sections(transport.run(script, check=False).stdout)
    found = (_backup(transport, text) for text in sections.get("backup", []))
    return tuple(sorted((b for b in found if b is not None), key=lambda b: b.created))


def find_backup(transport: Transport, backups: tuple[Backup, ...], spec: str | None) -> Backup:
    """`spec`: None (the newest), `factory` (the first one made), a backup's file name, path or stamp.

    Raises:
        RemoteError: no backup at all, or none matching `spec` (the known ones are listed).
    """
    name = transport.host.name
    if not backups:
        raise RemoteError(
            f"{name}: no backup in {BACKUP_DIR}", hint=f"the vendor script's copy may be at {MEMEDIT_BAK}"
        )
    if spec is None:
        return backups[-1]
    if spec == "factory":
        return backups[0]
    for backup in backups:
        if spec in (backup.path, backup.path.rsplit("/", 1)[-1], backup.created):
            return backup
    known = ", ".join(["factory", *(b.created for b in backups)])
    raise RemoteError(
        f"{name}: no backup {spec!r} (known: {known})",
        hint=f"`sophon-fleet memory backups {name}` lists them",
    )


def _sections(output: str) -> dict[str, list[str]]:
    """`@@…:name [arg]` lines split the output: each section's text (its `arg`, if any, as first line)."""
    parts: list[tuple[str, list[str]]] = []
    for line in output.splitlines():
        if line.startswith(_MARK):
            key, _, arg = line[len(_MARK) :].partition(" ")
            parts.append((key, [arg] if arg else []))
        elif parts:
            parts[-1][1].append(line)
    sections: dict[str, list[str]] = {}
    for key, lines in parts:
        sections.setdefault(key, []).append("\n".join(lines))
    return sections


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _layout_field(value: Any) -> Layout | None:
    if isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) and v >= 0 for v in value):
        return Layout(*value)
    return None


def _layout_list(layout: Layout | None) -> list[int] | None:
    return [layout.npu, layout.vpu, layout.vpp] if layout else None


def _write_record(transport: Transport, path: str, record: dict[str, Any]) -> None:
    """A small JSON record on the box, written atomically (as the login user, like the backups beside it)."""
    text = json.dumps({**record, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, sort_keys=True)
    script = 'set -e; mkdir -p "$(dirname "$1")"; printf "%s\\n" "$2" > "$1.tmp"; mv -f -- "$1.tmp" "$1"'
    transport.run(quote_command(["sh", "-c", script, "sh", path, text]))


def _backup(transport: Transport, text: str) -> Backup | None:
    """A backup from its `.json` record (first line: the record's path); None when it is not one."""
    path, _, body = text.partition("\n")
    meta = _json(body)
    if not isinstance(meta.get("sha256"), str) or not isinstance(meta.get("path"), str):
        return None
    try:  # the record is the box's word: its image must be one of our backups, nothing else on the box
        image = within(BACKUP_DIR, meta["path"])
    except UnsafePath as exc:
        raise FactError(
            f"{transport.host.name}: backup record {path} names {meta['path']!r}: {exc}"
        ) from None
    return Backup(image, meta["sha256"], _layout_field(meta.get("layout")), str(meta.get("created", "")))
