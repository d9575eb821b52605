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
