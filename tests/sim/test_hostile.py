"""Hostile manifests, kits, inventories and boxes against the simulated fleet.

Each test reproduces one finding of the adversarial run and asserts what must hold instead: refused with
exit 2 (or the documented code) before anything touches a box, bounded in time and memory.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from provision.cli.main import cli
from sim import kit_archive
from tests.sim.conftest import connect, needs_root, run, sudo
from tests.sim.flows import pull_pinned_standins

pytestmark = [pytest.mark.sim, needs_root]


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def box_data(fleet, name: str) -> Path:
    """The box's /data as the host sees it."""
    return fleet.state.box_paths(name).dir / "fs" / "data"


@pytest.fixture
def pulled(tmp_path):
    return pull_pinned_standins(tmp_path, bmodel_size=1 << 20)


def test_manifest_unpack_escaping_its_directory_is_refused_before_any_box_is_touched(
    sim_fleet, pulled, tmp_path
):
    fleet = sim_fleet(["se7-factory"])
    backups = box_data(fleet, "se7-1") / "sophon-fleet" / "backups"
    backups.mkdir(parents=True)
    (backups / "emmcboot.itb.19700101T000000Z.json").write_text(json.dumps({"layout": [3950, 2048, 3072]}))
    hostile = tmp_path / "hostile" / "glm4-9b.yaml"
    hostile.parent.mkdir()
    text = pulled.read_text()
    assert "    unpack: token_config\n" in text
    hostile.write_text(text.replace("    unpack: token_config\n", "    unpack: ./../../../backups\n"))

    code, output = invoke(
        "assets", "push", "-i", str(fleet.inventory_path), "-m", str(hostile), "--variant", "int4"
    )

    assert code == 2, output
    assert f"{hostile}:" in output and "files.token-config.unpack" in output
    assert "'./../../../backups' must be a directory name beside the archive" in output
    assert sorted(p.name for p in backups.iterdir()) == ["emmcboot.itb.19700101T000000Z.json"]
    assert not (box_data(fleet, "se7-1") / "sophon-fleet" / "models").exists()  # nothing reached the box


CHILD = """\
import json, sys, time
def peak_mib():  # VmHWM: this process's own peak (ru_maxrss would carry the forking parent's across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
from click.testing import CliRunner
from provision.cli.main import cli
started = time.monotonic()
result = CliRunner().invoke(cli, sys.argv[1:])
print(json.dumps({"code": result.exit_code, "output": result.output, "seconds": time.monotonic() - started,
                  "rss_mib": peak_mib()}))
"""


def run_cli_child(*args: str) -> dict:
    """The CLI in a child process, so its peak memory is its own (VmHWM)."""
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_box_printing_100_mb_from_bm_version_is_read_bounded(sim_fleet):
    fleet = sim_fleet(["se7-factory"])
    client = connect(fleet, "se7-1")
    hostile = "#!/bin/sh\nhead -c 100000000 /dev/zero | tr '\\000' A\n"
    assert run(client, "cat > /tmp/bm_version", stdin=hostile)[0] == 0
    status, out = sudo(client, "install -m 755 /tmp/bm_version /usr/sbin/bm_version")
    assert status == 0, out[:300]
    status, out = run(client, "/usr/sbin/bm_version | wc -c")
    client.close()
    assert status == 0 and out.split()[0] == "100000000", out[:300]

    result = run_cli_child("preflight", "--json", "--connect-timeout", "2", "-i", str(fleet.inventory_path))

    doc = json.loads(result["output"])
    (host,) = doc["hosts"]
    assert host["host"] == "se7-1" and host["status"] != "unreachable", host
    assert result["rss_mib"] < 200, result["rss_mib"]  # the adversarial run measured 541 MB
    assert result["seconds"] < 8, result["seconds"]  # and 8.5 s


def hostile_kit(path: Path, extra: tarfile.TarInfo, data: bytes = b"", *, script_mode: int = 0o755) -> Path:
    """The simulator's kit plus one hostile member (or with memory_edit.sh's mode changed)."""
    with tarfile.open(path, "w:xz") as tar:
        for name, content, mode in kit_archive.kit_members():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), script_mode if name.endswith(".sh") else mode
            tar.addfile(info, io.BytesIO(content))
        if extra is not None:
            tar.addfile(extra, io.BytesIO(data) if data else None)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, size
    return info


HOSTILE_MEMBERS = {
    "dotdot": (member("memory_edit/../../../../etc/owned", size=3), b"x\n\n"),
    "absolute": (member("/etc/owned", size=3), b"x\n\n"),
    "symlink": (member("memory_edit/bintools/evil", tarfile.SYMTYPE, "/etc/shadow"), b""),
    "hardlink": (member("memory_edit/bintools/evil", tarfile.LNKTYPE, "/etc/shadow"), b""),
    "outside": (member("elsewhere/file", size=3), b"x\n\n"),
}
FAST = ("--connect-timeout", "2", "--reboot-timeout", "15")


def work_dir_listing(fleet, name: str) -> list[str]:
    work = box_data(fleet, name) / "sophon-fleet"
    return sorted(p.name for p in work.iterdir()) if work.exists() else []


@pytest.mark.parametrize("case", sorted(HOSTILE_MEMBERS))
def test_a_hostile_kit_is_refused_on_the_controller_before_any_upload(sim_fleet, tmp_path, case):
    fleet = sim_fleet(["se7-factory"])
    kit = hostile_kit(tmp_path / "memory_edit_v2.12.tar.xz", *HOSTILE_MEMBERS[case])
    before = fleet.hardware("se7-1")

    code, output = invoke(
        "memory", "apply", "-i", str(fleet.inventory_path), "--kit", str(kit), "--yes", *FAST
    )

    assert code == 2, output
    assert str(kit) in output and "kit member" in output
    assert "free space" not in output
    assert work_dir_listing(fleet, "se7-1") in ([], ["locks"])  # nothing uploaded, no kit, no tarball
    assert fleet.hardware("se7-1").boot_id == before.boot_id


def test_a_kit_the_box_cannot_unpack_is_cleaned_up_on_the_box(sim_fleet, tmp_path):
    fleet = sim_fleet(["se7-factory"])
    kit = hostile_kit(tmp_path / "memory_edit_v2.12.tar.xz", None, script_mode=0o644)

    code, output = invoke(
        "memory", "apply", "-i", str(fleet.inventory_path), "--kit", str(kit), "--yes", *FAST
    )

    assert code == 1, output
    assert "not executable" in output and "free space" not in output
    leftovers = [n for n in work_dir_listing(fleet, "se7-1") if n.startswith("memory_edit")]
    assert leftovers == [], leftovers
