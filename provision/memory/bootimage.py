"""The boot image on a box: read its sha256, back it up verified, swap a new one in atomically, read heaps.

    /boot/emmcboot.itb                     what the box boots (the vendor's memory_edit never writes it)
    /boot/emmcboot.itb.memeditBak          memory_edit's own copy of the previous image
    /boot/.emmcboot.itb.sophon-fleet.tmp   our copy during a swap (verified, then renamed over the image)
    /data/sophon-fleet/backups/emmcboot.itb.<UTC time>{,.sha256,.json}   verified backups + their layout

Why the backup lives on /data and not beside `.memeditBak` in /boot: /boot is a small FAT partition that
already holds the image, the vendor script's `.memeditBak` and, during the swap, our temporary copy; /data is
the large ext4 partition that survives reboots. The first backup (the factory image) and the two newest are
kept.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from provision.boxpaths import BACKUP_DIR, BOOT_IMAGE, UnsafePath, within
from provision.errors import DiskFullError, FactError, IntegrityError, RemoteError
from provision.facts.parse import parse_total_mem
from provision.memory.layout import Layout
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


def make_backup(transport: Transport, current_sha: str, layout: Layout) -> Backup:
    """Copy the current boot image (whose sha256 is `current_sha`) to /data/sophon-fleet/backups with its
    sha256 and layout, verified. Raises IntegrityError when the copy cannot be written or verified."""
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
    listing = transport.run(
        f"ls -1 {BACKUP_DIR}/emmcboot.itb.*.json 2>/dev/null | sort | tail -n 1", check=False
    )
    path = listing.stdout.strip()
    if not path:
        raise RemoteError(
            f"{transport.host.name}: no backup in {BACKUP_DIR}",
            hint=f"the vendor script's copy may be at {MEMEDIT_BAK}",
        )
    meta = json.loads(transport.run(["cat", path]).stdout)
    layout = Layout(*meta["layout"]) if meta.get("layout") else None
    try:  # the record is the box's word: its image must be one of our backups, nothing else on the box
        image = within(BACKUP_DIR, str(meta["path"]))
    except UnsafePath as exc:
        raise FactError(
            f"{transport.host.name}: backup record {path} names {meta['path']!r}: {exc}"
        ) from None
    return Backup(image, str(meta["sha256"]), layout, str(meta.get("created", "")))
