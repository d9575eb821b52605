"""`memory apply` / `memory rollback` on one box: the chain that changes the boot image, safely.

    lock → kit (upload or preinstalled) → check (`-p` as root: maxima, plan again) → edit (`-c` as root;
    every `check … size` must equal the request, any `Error` aborts with /boot untouched) → backup (current
    image + sha256 + layout to /data/sophon-fleet/backups) → swap (copy to a temporary name in /boot, sync,
    verify, rename over emmcboot.itb, sync, sha256 read back) → reboot → waiting (new boot_id) → verify
    (heaps now == target) → verified; a wrong layout after boot → rollback (restore the backup, reboot,
    verify the old heaps).

The boot image operations themselves (backup, swap, read-back) are in `provision/memory/bootimage.py`.

The box's boot image is always either the old or the new one: the new image reaches /boot/emmcboot.itb only
by `rename(2)` from a verified, synced temporary file. Cancelling (Ctrl-C) is checked between stages, never
inside one, so each box reports exactly which image it was left with.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum

from provision import boxlock
from provision.boxpaths import BOOT_IMAGE
from provision.errors import (
    ApplyFailed,
    ConnectError,
    DiskFullError,
    FactError,
    FleetError,
    IntegrityError,
    RemoteError,
    SudoError,
)
from provision.memory import kit as memory_kit
from provision.memory.bootimage import (
    MEMEDIT_BAK,
    Backup,
    BootState,
    check_boot_room,
    decode_images,
    find_backup,
    make_backup,
    read_boot_state,
    read_heaps,
    record_boot,
    record_image,
    sha256_on_box,
    swap_in,
)
from provision.memory.layout import Layout
from provision.memory.output import MemoryEditReport, parse_memory_edit_c, parse_memory_edit_p
from provision.memory.plan import Action, BoxMemory, BoxPlan, Request, plan_box
from provision.memory.reboot import (
    Cancelled,
    RebootPolicy,
    RebootTimeout,
    read_boot_id,
    request_reboot,
    wait_for_new_boot,
)
from provision.ssh.transport import Transport, quote_command

LOCK_NAME = "memory"
EDIT_TIMEOUT = 300.0  # memory_edit unpacks and repacks a ~40 MB image


class Stage(str, Enum):
    LOCK = "lock"
    UPLOAD = "upload"
    CHECK = "check"
    EDIT = "edit"
    BACKUP = "backup"
    SWAP = "swap"
    REBOOT = "reboot"
    WAITING = "waiting"
    VERIFY = "verify"
    VERIFIED = "verified"
    ROLLBACK = "rollback"
    UNCHANGED = "unchanged"


Progress = Callable[[str, Stage, str], None]  # (host, stage, detail)


class Status(str, Enum):
    UNCHANGED = "unchanged"
    APPLIED = "applied"
    RESTORED = "restored"  # memory rollback


@dataclass(frozen=True)
class BoxResult:
    """A box that ended well: unchanged, applied and verified, or restored."""

    host: str
    status: Status
    before: Layout | None
    after: Layout | None
    backup: Backup | None = None
    boot_id: str | None = None
    note: str = ""


@dataclass(frozen=True)
class ApplyOptions:
    kit: memory_kit.LocalKit | None = None  # None: the box's own kit (preinstalled or uploaded earlier)
    kit_resolver: Callable[[], memory_kit.LocalKit] | None = None  # lazily finds one when a box has none
    auto_rollback: bool = True
    reboot: RebootPolicy = field(default_factory=RebootPolicy)
    break_lock: bool = False
    # how the operator reaches the boxes and what was asked (`-i hosts.yml`, `--npu 7615 ...`), so that the
    # recovery commands printed for a box can be run as they are
    reach_args: tuple[str, ...] = ()
    apply_args: tuple[str, ...] = ()
    rollback_to: str | None = None  # `memory rollback --to`: a backup's name or stamp, or `factory`

    def command(self, *words: str) -> str:
        """`sophon-fleet memory WORDS... <reach args>` as one shell-quoted line."""
        return quote_command(["sophon-fleet", "memory", *words, *self.reach_args])


class _Box:
    """One box's run: its transport, progress reporting, cancellation and what is known so far."""

    def __init__(
        self,
        transport: Transport,
        progress: Progress,
        cancel: threading.Event | None,
        options: ApplyOptions | None = None,
    ) -> None:
        self.t = transport
        self.name = transport.host.name
        self.progress = progress
        self.cancel = cancel or threading.Event()
        self.options = options or ApplyOptions()
        self.old_sha: str | None = None
        self.new_sha: str | None = None
        self.backup: Backup | None = None
        self.stage = Stage.LOCK
        self.swap_started = False  # until a swap starts, /boot/emmcboot.itb is known to be untouched
        self.read_back: str | None = None  # which image /boot held when last read (None: unknown)
        self.locking = False  # the lock was being taken (or is held): it may be on the box

    def recovery(self, image: str, *, rebooted: bool) -> tuple[str, ...]:
        return recovery_steps(self.name, image, self.backup, rebooted=rebooted, options=self.options)

    def swap(self, source: str, sha256: str) -> None:
        """`swap_in`, remembering that /boot may have changed from here on, and what it read back."""
        self.swap_started = True
        self.read_back = None  # until the swap's read-back: either image
        swap_in(self.t, source, sha256)
        self.read_back = self.which(sha256)

    def which(self, sha256: str) -> str:
        return "old" if sha256 == self.old_sha else "new" if sha256 == self.new_sha else "other"

    def enter(self, stage: Stage, detail: str = "") -> None:
        """Start a stage, unless the operator cancelled (checked only here, between stages)."""
        if self.cancel.is_set():
            image, described = self.image_state()
            raise ApplyFailed(
                f"{self.name}: interrupted before {stage.value}; {described}",
                host=self.name,
                stage=stage,
                image=image,
                backup=self.backup,
                recovery=self.recovery(image, rebooted=False),
                cancelled=True,
            )
        self.stage = stage
        self.progress(self.name, stage, detail)

    def sha256(self, path: str) -> str | None:
        return sha256_on_box(self.t, path)

    def image_state(self) -> tuple[str, str]:
        """Which image /boot/emmcboot.itb holds ("old" / "new" / "other" / "unknown"), and its description:
        read now, or when the box cannot be read, as the last swap read it back."""
        if self.old_sha is None or not self.swap_started:
            # no swap started: memory_edit itself never writes /boot/emmcboot.itb
            return "old", describe_image("old")
        try:
            current = self.sha256(BOOT_IMAGE)
        except FleetError:
            if self.read_back is None:
                return "unknown", describe_image("unknown")
            return self.read_back, f"{describe_image(self.read_back)}, as read back after the swap"
        image = "unknown" if current is None else self.which(current)
        return image, describe_image(image)


# ---------------------------------------------------------------------------------------------- apply


def apply_box(
    transport: Transport,
    plan: BoxPlan,
    request: Request,
    box: BoxMemory,
    options: ApplyOptions,
    *,
    progress: Progress,
    cancel: threading.Event | None = None,
) -> BoxResult:
    """Bring one box to its planned layout (see the module docstring). Raises ApplyFailed (refused,
    failed, timed out, rolled back or cancelled, each with the image the box was left with)."""
    run = _Box(transport, progress, cancel, options)
    if plan.action is Action.REFUSED:
        raise ApplyFailed(
            f"{run.name}: refused: {plan.reason}", host=run.name, stage=Stage.CHECK, image="old", refused=True
        )
    if plan.action is Action.NOTHING:
        run.enter(Stage.UNCHANGED, plan.reason)
        return BoxResult(run.name, Status.UNCHANGED, plan.current, plan.current, note=plan.reason)
    run.enter(Stage.LOCK)
    held: boxlock.Held | None = None
    try:
        transport.check_sudo()  # before anything changes, so a wrong password is told as such
        run.locking = True
        with boxlock.box_lock(transport, LOCK_NAME, "memory apply", break_lock=options.break_lock) as held:
            return _apply_locked(run, box, request, options)
    except ApplyFailed as exc:
        raise _note_lock_left(exc, run, held) from exc.__cause__
    except boxlock.LockedError as exc:
        raise ApplyFailed(
            exc.message, host=run.name, stage=Stage.LOCK, image="old", hint=exc.hint, refused=True
        ) from exc
    except FleetError as exc:
        image, described = run.image_state()
        failed = ApplyFailed(
            f"{exc.message}; {described}",
            host=run.name,
            stage=run.stage,
            image=image,
            backup=run.backup,
            recovery=run.recovery(image, rebooted=False) if image != "old" else (),
            hint=exc.hint,
            unreachable=isinstance(exc, ConnectError),
        )
        raise _note_lock_left(failed, run, held) from exc


def _note_lock_left(failed: ApplyFailed, run: _Box, held: boxlock.Held | None) -> ApplyFailed:
    """When this run could not remove its lock (the box stopped answering, maybe while the lock was being
    taken), say so, with the command that works once the box answers again; before the swap started there
    is nothing to roll back."""
    taking = held is None and run.locking and failed.unreachable  # cut off while taking it
    if not taking and (held is None or held.released):
        return failed
    path = held.path if held is not None else boxlock.lock_path(LOCK_NAME)
    left = (
        f"this run's lock {path} is still on it"
        if held is not None
        else f"the lock {path} this run was taking may be on it"
    )
    steps = list(failed.recovery)
    if not run.swap_started:
        steps.insert(
            0, f"{BOOT_IMAGE} was not touched (the run stopped before the swap): nothing to roll back"
        )
    if not any("--break-lock" in step for step in steps):
        again = run.options.command("apply", *run.options.apply_args, "--limit", run.name, "--break-lock")
        if run.swap_started:
            again = run.options.command("rollback", run.name, "--break-lock", "--yes")
        steps.append(
            f"{run.name} stopped answering, so {left}: once it answers, `{again}` (--break-lock removes that "
            "lock)"
        )
    failed.recovery = tuple(steps)
    return failed


def _apply_locked(run: _Box, box: BoxMemory, request: Request, options: ApplyOptions) -> BoxResult:
    folder = _kit_folder(run, box, options)
    run.enter(Stage.CHECK, "memory_edit -p")
    report = read_layout(run.t, folder)
    now = report.now or box.now
    state = read_boot_state(run.t, now)  # what /boot holds and what the box booted with, from the records
    if state.pending:
        run.progress(run.name, Stage.CHECK, state.describe())
        now = state.booted_heaps or now
    plan = plan_box(replace(box, now=now, max=report.max), request)
    if plan.action is Action.REFUSED:
        raise ApplyFailed(
            f"{run.name}: refused: {plan.reason}", host=run.name, stage=Stage.CHECK, image="old", refused=True
        )
    if plan.action is Action.NOTHING and not state.pending:
        run.enter(Stage.UNCHANGED, plan.reason)
        return BoxResult(run.name, Status.UNCHANGED, now, now, note=plan.reason)
    assert plan.target is not None and now is not None
    target = plan.target
    run.old_sha = state.boot_sha
    if run.old_sha is None:
        raise RemoteError(f"{run.name}: cannot read {BOOT_IMAGE}", hint="is this a BM1684X SoC box?")
    boot_id = state.boot_id or read_boot_id(run.t)
    # what a rollback restores: the image the box runs now (backed up by the run that replaced it, if /boot
    # changed since the box booted), expected to boot with the heaps it has now
    running = state.backup_of(state.booted_sha) if state.pending else None
    if state.pending and state.label(state.boot_sha) == target:
        run.new_sha = state.boot_sha  # an earlier run put this target's image in place and did not reboot
        run.swap_started = True
        run.read_back = "new"
        run.backup = running
        run.progress(run.name, Stage.SWAP, f"the image for {target} is already in {BOOT_IMAGE}")
    else:
        try:
            check_boot_room(run.t)
        except DiskFullError as exc:
            raise ApplyFailed(
                f"{exc.message}", host=run.name, stage=Stage.CHECK, image="old", hint=exc.hint, refused=True
            ) from exc
        run.enter(Stage.EDIT, f"memory_edit -c {target}")
        new_image = edit(run, folder, target)
        written = decode_images(run.t, [(run.new_sha, new_image)], None)[0].get(run.new_sha or "")
        if written is not None and written != target:  # never swap in an image known to boot wrong
            raise ApplyFailed(
                f"{run.name}: memory_edit failed: the image it wrote boots with {written} (read from its "
                f"device tree), not the requested {target}; /boot is unchanged",
                host=run.name,
                stage=Stage.EDIT,
                image="old",
                hint="check the kit matches the box (model, dts, SDK); the box was not rebooted",
            )
        run.enter(Stage.BACKUP)
        made = make_backup(run.t, run.old_sha, state.label(run.old_sha))
        run.backup = running if state.pending else made
        run.enter(Stage.SWAP, f"{new_image} -> {BOOT_IMAGE}")
        run.swap(new_image, run.new_sha or "")
    after = _reboot_and_read(run, boot_id, options, target)
    if after == target:
        record_boot(run.t, read_boot_id(run.t), run.new_sha or "", after)
        record_image(run.t, run.new_sha or "", after, how="verified boot")
        run.progress(run.name, Stage.VERIFIED, f"{after}")
        return BoxResult(run.name, Status.APPLIED, now, after, backup=run.backup)
    message = f"{run.name} booted with {after}, not the requested {target}"
    if not options.auto_rollback or run.backup is None:
        why = (
            "--no-auto-rollback" if options.auto_rollback is False else "no backup of the image it ran before"
        )
        raise ApplyFailed(
            f"{message}; the new image stays in place ({why})",
            host=run.name,
            stage=Stage.VERIFY,
            image="new",
            backup=run.backup,
            recovery=(
                f"`{options.command('backups', run.name)}` lists the backups; "
                f"`{options.command('rollback', run.name, '--to', 'factory', '--yes')}` restores the first "
                "one",
            ),
        )
    restored = _rollback(run, options, expected=now)
    raise ApplyFailed(
        f"{message}; rolled back to {restored}",
        host=run.name,
        stage=Stage.ROLLBACK,
        image="old",
        backup=run.backup,
    )


def _kit_folder(run: _Box, box: BoxMemory, options: ApplyOptions) -> str:
    """The folder of the memory_edit script to run (as a shell expression)."""
    if options.kit is None and box.kit_path:
        return memory_kit.script_dir(box.kit_path)
    kit = options.kit
    if kit is None:
        if options.kit_resolver is None:
            raise ApplyFailed(
                f"{run.name}: no memory_edit kit on the box and none given",
                host=run.name,
                stage=Stage.UPLOAD,
                image="old",
                hint="give one with --kit FILE|URL",
            )
        kit = options.kit_resolver()
    run.enter(Stage.UPLOAD, kit.source)
    return memory_kit.upload_kit(run.t, kit)


def read_layout(transport: Transport, folder: str) -> MemoryEditReport:
    """`memory_edit.sh -p` as root (so `now` is real, not 0x0)."""
    output = transport.run(
        memory_kit.memory_edit_command(folder, ["-p"]), sudo=True, timeout=EDIT_TIMEOUT, check=False
    ).stdout
    return parse_memory_edit_p(output)


def edit(run: _Box, folder: str, target: Layout) -> str:
    """Run `-c`; returns the new image's path. Any Error line, a `check` size other than the request or a
    missing `ok` line raises ApplyFailed with /boot verified untouched."""
    args = ["-c", "-npu", str(target.npu), "-vpu", str(target.vpu), "-vpp", str(target.vpp)]
    result = run.t.run(
        memory_kit.memory_edit_command(folder, args), sudo=True, timeout=EDIT_TIMEOUT, check=False
    )
    try:
        report = parse_memory_edit_c(result.stdout)
        problem = None
    except FactError as exc:
        report, problem = None, exc.message
    if report is not None:
        if report.errors:
            problem = "; ".join(report.errors)
        elif report.check is None:
            problem = "memory_edit printed no `check … size` lines (output cut short?)"
        elif report.check != target:
            problem = f"memory_edit checked {report.check}, not the requested {target}"
        elif not report.ok or result.exit_code != 0:
            problem = f"memory_edit did not finish (exit {result.exit_code}, no `check edit size ok`)"
    if problem is not None:
        untouched = run.sha256(BOOT_IMAGE) == run.old_sha
        raise ApplyFailed(
            f"{run.name}: memory_edit failed: {problem}; "
            + ("/boot is unchanged" if untouched else "/boot/emmcboot.itb CHANGED — check it"),
            host=run.name,
            stage=Stage.EDIT,
            image="old" if untouched else "other",
        )
    assert report is not None
    new_image = report.new_image  # v2.12 prints it; older versions write it into their folder
    if not new_image:
        new_image = run.t.run(f"cd {folder} && pwd", sudo=True).stdout.strip() + "/emmcboot.itb"
    run.new_sha = run.sha256(new_image)
    if run.new_sha is None or run.new_sha == run.old_sha:
        raise ApplyFailed(
            f"{run.name}: memory_edit wrote no new image at {new_image}; /boot is unchanged",
            host=run.name,
            stage=Stage.EDIT,
            image="old",
        )
    return new_image


def _reboot_and_read(
    run: _Box, boot_id: str, options: ApplyOptions, target: Layout | None, *, image: str = "new"
) -> Layout:
    """Reboot into the image now in /boot (`image`: which one that is), wait for the new boot, read the
    heaps."""
    run.enter(Stage.REBOOT)
    request_reboot(run.t, timeout=options.reboot.command_timeout)
    run.progress(run.name, Stage.WAITING, f"up to {options.reboot.timeout:g} s")
    try:
        wait_for_new_boot(run.t, boot_id, options.reboot, cancel=run.cancel)
    except RebootTimeout as exc:
        raise ApplyFailed(
            exc.message,
            host=run.name,
            stage=Stage.WAITING,
            image=image,
            backup=run.backup,
            recovery=run.recovery(image, rebooted=True),
        ) from exc
    except Cancelled as exc:
        raise ApplyFailed(
            f"{run.name}: interrupted while waiting for the reboot; {describe_image(image)} and is "
            "booting it (check it with `sophon-fleet memory plan`)",
            host=run.name,
            stage=Stage.WAITING,
            image=image,
            backup=run.backup,
            recovery=run.recovery(image, rebooted=True),
            cancelled=True,
        ) from exc
    run.enter(Stage.VERIFY, f"expect {target}" if target else "")
    return read_heaps(run.t)


def _rollback(run: _Box, options: ApplyOptions, *, expected: Layout) -> Layout:
    """Put the backup back, reboot, and require the old heaps."""
    backup = run.backup
    assert backup is not None
    run.enter(Stage.ROLLBACK, f"restore {backup.path}")
    run.swap(backup.path, backup.sha256)
    boot_id = read_boot_id(run.t)
    after = _reboot_and_read(run, boot_id, options, expected, image="old")
    if after != expected:
        raise ApplyFailed(
            f"{run.name}: after the rollback the box has {after}, not the old {expected}",
            host=run.name,
            stage=Stage.ROLLBACK,
            image="old",
            backup=backup,
        )
    return after


# ---------------------------------------------------------------------------------------------- rollback


def rollback_box(
    transport: Transport,
    options: ApplyOptions,
    *,
    progress: Progress,
    cancel: threading.Event | None = None,
) -> BoxResult:
    """`memory rollback`: restore the newest backup (its sha256 verified), reboot, verify its layout."""
    run = _Box(transport, progress, cancel, options)
    run.enter(Stage.LOCK)
    try:
        transport.check_sudo()
        with boxlock.box_lock(transport, LOCK_NAME, "memory rollback", break_lock=options.break_lock):
            return _rollback_locked(run, options)
    except SudoError as exc:
        raise ApplyFailed(
            f"{exc.message}; {describe_image('old')}",
            host=run.name,
            stage=Stage.LOCK,
            image="old",
            hint=exc.hint,
            refused=True,
        ) from exc
    except boxlock.LockedError as exc:
        raise ApplyFailed(
            exc.message, host=run.name, stage=Stage.LOCK, image="unknown", hint=exc.hint, refused=True
        ) from exc


def _rollback_locked(run: _Box, options: ApplyOptions) -> BoxResult:
    transport = run.t
    before = read_heaps(transport)
    state = read_boot_state(transport, before)
    backup = find_backup(transport, state.backups, options.rollback_to)
    expected = state.label(backup.sha256)  # decoded from the backup itself
    run.backup = backup
    run.old_sha = state.boot_sha
    run.new_sha = backup.sha256
    if run.sha256(backup.path) != backup.sha256:
        raise IntegrityError(f"{run.name}: backup {backup.path} does not match its sha256 {backup.sha256}")
    if run.old_sha == backup.sha256 and not state.pending and before == expected:
        run.enter(Stage.UNCHANGED, f"{backup.path} is already in place and booted")
        return BoxResult(run.name, Status.UNCHANGED, before, before, backup=backup)
    if state.pending:
        run.progress(run.name, Stage.CHECK, state.describe())
    run.enter(Stage.ROLLBACK, f"restore {backup.path}")
    if run.old_sha != backup.sha256:
        run.swap(backup.path, backup.sha256)
    after = _reboot_and_read(run, read_boot_id(transport), options, expected, image="new")
    if expected is not None and after != expected:
        raise RemoteError(f"{run.name}: after the rollback the box has {after}, not {expected}")
    record_boot(transport, read_boot_id(transport), backup.sha256, after)
    record_image(transport, backup.sha256, after, how="verified boot")
    run.progress(run.name, Stage.VERIFIED, str(after))
    why = state.unreadable.get(backup.sha256, "")
    note = (
        ""
        if expected is not None
        else f"the backup's layout could not be read from it ({why}): the box runs what it booted"
    )
    return BoxResult(run.name, Status.RESTORED, before, after, backup=backup, note=note)


def backups_of(transport: Transport) -> BootState:
    """`memory backups HOST`: the backups, with what /boot holds and what the box booted with (read only:
    a first look during this boot is recorded, nothing else changes)."""
    return read_boot_state(transport, read_heaps(transport))


# ---------------------------------------------------------------------------------------------- texts


def describe_image(image: str) -> str:
    return {
        "old": "the box still has its old boot image (/boot/emmcboot.itb untouched)",
        "new": "the box has the NEW boot image in place (it takes effect at the next reboot)",
        "other": "/boot/emmcboot.itb is neither the old nor the new image",
    }.get(image, "which boot image the box has is unknown (it could not be read)")


def recovery_steps(
    host: str, image: str, backup: Backup | None, *, rebooted: bool, options: ApplyOptions | None = None
) -> tuple[str, ...]:
    """What the operator can do by hand, with the backup's location; the commands run as printed."""
    options = options or ApplyOptions()
    saved = (
        f"the previous image is saved on the box at {backup.path} (sha256 {backup.sha256}, "
        f"layout {backup.layout}); the vendor script's copy is {MEMEDIT_BAK}"
        if backup
        else f"the vendor script's copy of the previous image is {MEMEDIT_BAK}"
    )
    if image == "old" and not rebooted:
        return ()
    rollback = options.command("rollback", host, "--break-lock", "--yes")
    steps = [saved]
    if rebooted:
        steps += [
            f"power-cycle {host}; once it answers, `{rollback}` "
            "restores the previous image and verifies it (--break-lock: this run could not remove its lock "
            "while the box was down)",
            "if it stays dark: on its serial console (115200 8N1) or a rescue boot, mount /boot "
            "(mmcblk0p1) and /data (mmcblk0p7), check `sha256sum` of the backup against its .sha256 file, "
            f"then `cp <data>{backup.path.removeprefix('/data') if backup else '/…'} <boot>/emmcboot.itb "
            "&& sync` (or copy emmcboot.itb.memeditBak over it) and reboot",
            "last resort: reflash the box with its SDK image (SD card), then run `memory apply` again",
        ]
    else:
        steps.append(
            f"`{rollback}` puts the previous image back and reboots "
            "(--break-lock: in case this run's lock is still on the box)"
        )
    return tuple(steps)
