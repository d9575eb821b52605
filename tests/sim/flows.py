"""Steps shared by integration tests: point the CLI at a simulated fleet, pull and push its stand-ins."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from click.testing import CliRunner

from provision.cli.main import cli
from sim.mirror import build_asset_tree
from tests.sim.conftest import connect, run, sudo


def use_fleet(fleet, tmp_path, monkeypatch) -> None:
    """Environment of a user of this fleet: its manifest, a private cache, home and no ~/.ssh/config."""
    monkeypatch.setenv("SOPHON_FLEET_MODELS", str(fleet.manifest_path.parent))
    monkeypatch.setenv("SOPHON_FLEET_MODEL", fleet.manifest_path.stem)
    monkeypatch.setenv("SOPHON_FLEET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SOPHON_FLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SOPHON_FLEET_SSH_CONFIG", str(tmp_path / "no-ssh-config"))


def invoke(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def pull_and_push(fleet, variant: str, names: list[str] | None = None) -> None:
    """`assets pull` then `assets push` through the CLI (to all boxes, or to `names`)."""
    code, out, err = invoke("assets", "pull", "--variant", variant, "--no-dfss")
    assert code == 0, out + err
    limit = ["--limit", ",".join(names)] if names else []
    code, out, err = invoke("assets", "push", "-i", str(fleet.inventory_path), "--variant", variant, *limit)
    assert code == 0, out + err


def pull_pinned_standins(directory: Path, bmodel_size: int) -> Path:
    """A pinned glm4-9b-sim manifest of fresh stand-ins under `directory`, its int4 files pulled into the
    test's cache through the CLI (from the tree itself: no mirror node needed). Returns the manifest."""
    tree = build_asset_tree(directory / "mirror", bmodel_size=bmodel_size)
    manifest = directory / "good" / "glm4-9b-sim.yaml"
    manifest.parent.mkdir()
    manifest.write_text(tree.manifest_yaml(pin=True))
    code, out, err = invoke(
        "assets",
        "pull",
        "-m",
        str(manifest),
        "--variant",
        "int4",
        "--mirror",
        f"file://{tree.root}",
        "--no-dfss",
    )
    assert code == 0, out + err
    return manifest


FACTORY, TARGET = (3950, 2048, 3072), (7615, 3071, 3071)  # se7-factory's heaps, the int8 layout
HALVED = (3807, 1535, 1535)  # what `boot-heaps-short` boots with for TARGET (and `itb-wrong-layout` writes)


def read_until(proc, word, seen):
    """Read the CLI's progress lines (stderr) until one shows `word` as its stage."""
    for line in proc.stderr:
        seen.append(line)
        if line.split()[1:2] == [word]:
            return line
    raise AssertionError(f"no {word} stage in: {''.join(seen)}")


HOLD_DIR = "/data/.hold"  # outside /data/sophon-fleet: nothing of the tool's
HOLD_SCRIPT = """#!/bin/sh
held=
case " $* " in {glob}) mkdir {dir}/held 2>/dev/null && held=1 && sleep {seconds} ;; esac
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
{command} "$@"
status=$?
[ -z "$held" ] || touch {dir}/released
exit $status
"""

# Where each stage of `memory apply` can be held: the first call, after the plan's probe, of a command with
# these arguments (literal parts, in order) is made in that stage and in no earlier one. `waiting` needs no
# hold: the box is rebooting.
APPLY_STAGE_HOLDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "lock": ("touch", ("memory.lock/heartbeat ",)),  # the lock dir and its owner are written by then
    "upload": ("sha256sum", ("/data/sophon-fleet/memory_edit.upload.tar.xz ",)),
    "check": ("sha256sum", (" /boot/emmcboot.itb ",)),  # read_boot_state, after memory_edit -p
    "edit": ("sha256sum", (" -- /data/sophon-fleet/memory_edit/emmcboot.itb ",)),  # after memory_edit -c
    "backup": ("cp", (" /boot/emmcboot.itb /data/sophon-fleet/backups/",)),
    "swap": ("mv", (".sophon-fleet.tmp /boot/emmcboot.itb ",)),  # copied and verified, not yet renamed
    "reboot": ("reboot", ("",)),  # `sudo reboot` was sent; the box goes down when the hold ends
    "verify": ("cat", ("bm_npu_heap_dump/total_mem ",)),  # the box runs its new boot
    "rollback": ("cp", ("/backups/emmcboot.itb.", " /boot/.emmcboot.itb.sophon-fleet.tmp ")),
}


class Hold:
    """Holds on a box the first call of `command` whose arguments contain `parts` (in order) for `seconds`,
    then lets it run: a test waits until the call is held, acts (kill, link cut) while the tool waits for it,
    and can then wait until the box finished it. Installed as /usr/local/bin/<command> (first in the PATH of
    both the login and sudo), with its markers in HOLD_DIR; `remove()` takes it away again."""

    def __init__(self, fleet, name: str, command: str, parts: tuple[str, ...], seconds: float = 3.0) -> None:
        self.fleet, self.name, self.command = fleet, name, command
        self.markers = fleet.state.box_paths(name).data / HOLD_DIR.removeprefix("/data/")
        glob = "*" + "*".join(shlex.quote(p) for p in parts) + "*"
        script = HOLD_SCRIPT.format(glob=glob, dir=HOLD_DIR, seconds=seconds, command=command)
        client = connect(fleet, name)
        try:
            assert run(client, "cat > /tmp/hold", stdin=script)[0] == 0
            assert sudo(client, f"install -m 755 /tmp/hold /usr/local/bin/{command}")[0] == 0
            assert sudo(client, f"install -d -m 1777 {HOLD_DIR}")[0] == 0
        finally:
            client.close()

    def _wait(self, marker: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not (self.markers / marker).exists():
            assert time.monotonic() < deadline, (
                f"{self.command} on {self.name} was not {marker} in {timeout} s"
            )
            time.sleep(0.02)

    def wait_held(self, timeout: float = 60.0) -> None:
        self._wait("held", timeout)

    def wait_released(self, timeout: float = 60.0) -> None:
        self._wait("released", timeout)

    def remove(self) -> None:
        client = connect(self.fleet, self.name)
        try:
            assert sudo(client, f"rm -rf /usr/local/bin/{self.command} {HOLD_DIR}")[0] == 0
        finally:
            client.close()


def hold_stage(fleet, name: str, stage: str, seconds: float = 3.0) -> Hold:
    command, parts = APPLY_STAGE_HOLDS[stage]
    return Hold(fleet, name, command, parts, seconds)
