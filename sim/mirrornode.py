"""The fleet's mirror: a node at 10.213.K.2 serving the stand-in assets like the vendor's servers do.

    http://10.213.K.2/<dfss path>        HTTP with Range (sim.mirror), e.g. for `--from-mirror` and pulls
    sftp://open@10.213.K.2/<dfss path>   a real OpenSSH sshd, user `open` / password `open`, read-only,
                                         chrooted to the tree (dfss-style paths, relative or absolute)

The tree holds loadable stand-ins (sim.tinyglm: a tiny real GLM-4 as the int4/int8 bmodels, and its
token_config.zip), the SAIL wheel carrying the emulator, and the memory_edit kit, plus a manifest pinned to
exactly these files, so the whole pipeline downloads, pushes, loads and chats with them.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from sim import kit_archive, mirror, tinyglm

HTTP_PORT = 80
SFTP_USER = "open"
SFTP_PASSWORD = "open"


def build_tree(
    root: Path, *, seed: int = 0, bmodel_size: int = 0, compiled: Path | None = None
) -> mirror.AssetTree:
    """Write the stand-in tree under `root` at dfss paths; `bmodel_size` pads the bmodels (0: as made).
    With `compiled` (a directory from sim/vendor.py), the bmodels are the real compiled ones instead."""
    with tempfile.TemporaryDirectory() as tmp:
        made: dict[str, Path] = {}

        def maker(path: Path, variant: str, size: int, seed_: int) -> None:
            if compiled is not None:
                shutil.copyfile(compiled / f"glm4-9b_{variant}_1dev.bmodel", path)
                made[variant] = compiled / "token_config.zip"
                return
            standin = tinyglm.build_standin(Path(tmp) / variant, seed=seed_, variant=variant)
            if size:
                tinyglm.pad_bmodel(standin.bmodel, max(size, standin.bmodel.stat().st_size))
            shutil.move(standin.bmodel, path)
            made[variant] = standin.token_zip

        tree = mirror.build_asset_tree(root, bmodel_size=bmodel_size, seed=seed, bmodel_maker=maker)
        # the token config that matches the stand-ins' vocabulary replaces the generic one
        shutil.copyfile(made["int4"], root / mirror.TOKEN_ZIP)
        members = _zip_members(root / mirror.TOKEN_ZIP)
    kit = kit_archive.build_kit(root)
    files = {rel: mirror._size_sha(root / rel) for rel in tree.files}
    for path in (kit.tarball, kit.vendor_bundle):
        files[path.name] = mirror._size_sha(path)
    return mirror.AssetTree(root=root, files=files, token_members=members)


def _zip_members(path: Path) -> dict[str, tuple[int, str]]:
    import hashlib
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return {
            info.filename: (info.file_size, hashlib.sha256(archive.read(info)).hexdigest())
            for info in archive.infolist()
            if not info.is_dir()
        }


def manifest_text(tree: mirror.AssetTree, url: str, address: str) -> str:
    """The glm4-9b-sim manifest of the simulated fleet: mirror first, the mirror's SFTP as the dfss server,
    every file pinned (size + sha256), and the memory_edit kit."""
    text = tree.manifest_yaml(pin=True, mirrors=[url])
    kit_size, kit_sha = tree.files[kit_archive.KIT_NAME]
    text += (
        f"dfss_servers:\n  - {{host: {address}, port: 22, user: {SFTP_USER}}}\n"
        f"memory_edit_kit:\n  path: {kit_archive.KIT_NAME}\n  size: {kit_size}\n  sha256: {kit_sha}\n"
    )
    return "# The simulated fleet's stand-in for ChatGLM4-9B (served by its mirror)\n" + text


def http_command(netns: str, root: Path, address: str) -> list[str]:
    return [
        "ip",
        "netns",
        "exec",
        netns,
        sys.executable,
        "-m",
        "sim.mirror",
        "serve",
        str(root),
        "--bind",
        address,
        "--port",
        str(HTTP_PORT),
    ]


def spawn(command: list[str], log: Path) -> int:
    """Start a long-running helper in its own session; returns its pid (no Popen object to reap)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, fd, 1),
        (os.POSIX_SPAWN_DUP2, fd, 2),
        (os.POSIX_SPAWN_CLOSE, fd),
    ]
    try:
        return os.posix_spawnp(command[0], command, env, file_actions=actions, setsid=True)
    finally:
        os.close(fd)
