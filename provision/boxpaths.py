"""Where things live on a box: every remote path sophon-fleet reads or writes, in one place."""

WORK_DIR = "/data/sophon-fleet"  # everything sophon-fleet writes on a box
MODELS_DIR = f"{WORK_DIR}/models"  # <model>/<variant>/<file>, each verified file has <file>.verified
VERIFIED_MARKER = ".verified"
RUNTIME_DIR = f"{WORK_DIR}/runtime"  # <version>/, `current` -> the live one, `history`
RUNTIME_LINK = f"{RUNTIME_DIR}/current"
KIT_DIR = f"{WORK_DIR}/memory_edit"  # the memory_edit kit sophon-fleet uploads
BACKUP_DIR = f"{WORK_DIR}/backups"  # verified boot image backups
LOCK_DIR = f"{WORK_DIR}/locks"

BOOT_IMAGE = "/boot/emmcboot.itb"  # what the box boots
LIBSOPHON_LINK = "/opt/sophon/libsophon-current"
# where a memory_edit kit may live: Airbox factory, the deb's symlink, and where sophon-fleet uploads it
KIT_PATHS = ("/opt/sophon/memory_edit/memory_edit.sh", "/bin/memory_edit.sh", f"{KIT_DIR}/memory_edit.sh")


# Every path that a manifest or a box can influence goes through `confined` or `plain_name` before it is
# used in a command or sent to a box: a value escaping its root (`..`, absolute, `\\`, control characters,
# shell-special names) is refused here, once, not at each place that joins it.
_CONTROL = {chr(c) for c in range(32)} | {"\x7f"}


class UnsafePath(ValueError):
    """A path from a manifest or a box that would leave its allowed root (the message says why)."""


def relative_parts(value: str) -> tuple[str, ...]:
    """The components of a relative path that stays inside whatever root it is joined to.

    Raises:
        UnsafePath: empty, absolute, `..`, a backslash or a control character.
    """
    if not isinstance(value, str) or not value.strip():
        raise UnsafePath("must be a non-empty relative path")
    if _CONTROL & set(value):
        raise UnsafePath("must not contain control characters")
    if "\\" in value:
        raise UnsafePath("must not contain a backslash")
    if value.startswith("/"):
        raise UnsafePath("must be relative, not absolute")
    parts = tuple(p for p in value.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafePath("must not contain '..'")
    if not parts:
        raise UnsafePath("must name something below its root")
    return parts


def plain_name(value: str) -> str:
    """A single path component (a directory or version name): no `/`, not `.`/`..`, no leading `-`.

    Raises:
        UnsafePath: anything else.
    """
    parts = relative_parts(value)
    if len(parts) != 1 or "/" in value or value.startswith("-"):
        raise UnsafePath("must be a single name (no '/', not starting with '-')")
    return parts[0]


def confined(root: str, value: str) -> str:
    """`value` (relative) joined to `root`, normalised; it cannot leave `root`.

    Raises:
        UnsafePath: see `relative_parts`.
    """
    return "/".join((root.rstrip("/"), *relative_parts(value)))


def within(root: str, path: str) -> str:
    """An absolute `path` read from a box, checked to lie below `root` (e.g. a backup's recorded path).

    Raises:
        UnsafePath: outside `root`, or not normalised.
    """
    prefix = root.rstrip("/") + "/"
    if not isinstance(path, str) or not path.startswith(prefix):
        raise UnsafePath(f"must lie below {root}")
    return confined(root, path[len(prefix) :])
