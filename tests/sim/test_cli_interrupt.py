"""One Ctrl-C rule. The first Ctrl-C stops each box before its next changing stage and
says so; the recap still prints; a second Ctrl-C aborts at once. SIGINT is sent at the stage in question,
awaited from the command's own progress output."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sim.conftest import needs_root
from tests.sim.flows import use_fleet

pytestmark = [pytest.mark.sim, needs_root]

SOPHON_FLEET = str(Path(sys.executable).with_name("sophon-fleet"))
BOOK = """\
name: layout then deploy
steps:
  - preflight: {variant: int8}
  - memory: {variant: int8}
  - deploy: {}
"""


def start_play(fleet, book):
    return subprocess.Popen(
        [SOPHON_FLEET, "play", str(book), "-i", str(fleet.inventory_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(
            signal.SIGINT, signal.SIG_DFL
        ),  # a background run inherits it ignored
    )


def lines_until(stream, marker, seen):
    for line in stream:
        seen.append(line)
        if marker in line:
            return line
    raise AssertionError(f"never saw {marker!r} in: {''.join(seen)}")


def test_ctrl_c_in_a_plays_memory_edit_stops_before_the_backup_and_prints_the_recap(
    sim_fleet, tmp_path, monkeypatch
):
    fleet = sim_fleet(["se7-small"], mirror=True)
    use_fleet(fleet, tmp_path, monkeypatch)
    fleet.fault("se7-1", "memedit-slow")  # the edit stage lasts 3 s more: time to interrupt inside it
    image = fleet.state.box_paths("se7-1").boot_image.read_bytes()
    book = tmp_path / "book.yml"
    book.write_text(BOOK)
    proc = start_play(fleet, book)
    seen = []
    try:
        lines_until(proc.stdout, "se7-1: edit", seen)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    out = "".join(seen) + out
    assert proc.returncode == 130, out + err
    assert "Ctrl-C again to abort now" in err
    assert "PLAY RECAP" in out  # the recap always prints
    assert "se7-1: failed at memory:" in out and "interrupted before backup" in out
    assert "step deploy:" not in out and "interrupted: stopped before step deploy" in out
    assert "Traceback" not in err
    # the box still has its old boot image and heaps, and never rebooted
    assert fleet.state.box_paths("se7-1").boot_image.read_bytes() == image
    assert fleet.hardware("se7-1").heaps == [1024, 1024, 1536] and fleet.hardware("se7-1").boot_count == 1


def test_a_second_ctrl_c_aborts_at_once(sim_fleet, tmp_path, monkeypatch):
    fleet = sim_fleet(["se7-small"], mirror=True)
    use_fleet(fleet, tmp_path, monkeypatch)
    fleet.fault("se7-1", "memedit-slow")
    book = tmp_path / "book.yml"
    book.write_text(BOOK)
    proc = start_play(fleet, book)
    seen = []
    try:
        lines_until(proc.stdout, "se7-1: edit", seen)
        proc.send_signal(signal.SIGINT)
        lines_until(proc.stderr, "Ctrl-C again to abort now", [])
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)  # not the 3 s edit plus the rest: at once
    finally:
        proc.kill()
        proc.wait()
    out = "".join(seen) + out
    assert proc.returncode == 130 and "aborting now" in err and "Traceback" not in err
    # what is known is still printed: the recap of the step that finished, and where it was aborted
    recap = out[out.index("PLAY RECAP") :].splitlines()
    assert recap[1].split()[:3] == ["se7-1", ":", "ok=1"], out
    assert "aborted by a second Ctrl-C during step memory" in out


def test_ctrl_c_in_assets_push_finishes_the_current_file_then_stops(sim_fleet, tmp_path, monkeypatch):
    fleet = sim_fleet(["se7-ready-int8"], mirror=True, bmodel_size=24 << 20)
    use_fleet(fleet, tmp_path, monkeypatch)
    inv = str(fleet.inventory_path)
    pulled = subprocess.run(
        [SOPHON_FLEET, "assets", "pull", "--variant", "int4", "--no-dfss"], capture_output=True
    )
    assert pulled.returncode == 0, pulled.stderr
    fleet.fault("se7-1", "rate", "50")  # ~6 MB/s: the 24 MiB bmodel takes ~4 s
    proc = subprocess.Popen(
        [SOPHON_FLEET, "assets", "push", "-i", inv, "--variant", "int4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(
            signal.SIGINT, signal.SIG_DFL
        ),  # a background run inherits it ignored
    )
    seen = []
    try:
        sending = lines_until(proc.stderr, "sending", seen)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    err = "".join(seen) + err
    assert proc.returncode == 130, out + err
    assert "finishing the current file on 1 box; Ctrl-C again to abort now" in err
    assert "interrupted before" in out and "Traceback" not in err  # the summary still prints
    # the file that was being sent when Ctrl-C came is whole and verified on the box; the rest is not sent
    name = sending.split()[-1]
    vdir = fleet.state.box_paths("se7-1").data / "sophon-fleet/models/glm4-9b-sim/int4"
    assert (vdir / f"{name}.verified").exists() or (vdir / name).exists(), sorted(
        p.name for p in vdir.iterdir()
    )
    assert not list(vdir.glob("*.part"))
    # the next push resumes and completes
    fleet.fault("se7-1", "rate", "0")
    again = subprocess.run(
        [SOPHON_FLEET, "assets", "push", "-i", inv, "--variant", "int4"], capture_output=True
    )
    assert again.returncode == 0, again.stderr


def test_a_second_ctrl_c_in_assets_push_aborts_at_once_and_prints_where_each_box_was(
    sim_fleet, tmp_path, monkeypatch
):
    fleet = sim_fleet(["se7-ready-int8", "se7-ready-int8"], mirror=True, bmodel_size=24 << 20)
    use_fleet(fleet, tmp_path, monkeypatch)
    pulled = subprocess.run(
        [SOPHON_FLEET, "assets", "pull", "--variant", "int4", "--no-dfss"], capture_output=True
    )
    assert pulled.returncode == 0, pulled.stderr
    for name in ("se7-1", "se7-2"):
        fleet.fault(name, "rate", "20")  # ~2.5 MB/s: the 24 MiB bmodel takes ~10 s
    proc = subprocess.Popen(
        [SOPHON_FLEET, "assets", "push", "-i", str(fleet.inventory_path), "--variant", "int4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = []
    try:
        lines_until(proc.stderr, "sending", seen)
        proc.send_signal(signal.SIGINT)
        lines_until(proc.stderr, "Ctrl-C again to abort now", seen)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=8)  # not the rest of the 24 MiB: at once
    finally:
        proc.kill()
        proc.wait()
    err = "".join(seen) + err
    assert proc.returncode == 130 and "aborting now" in err and "Traceback" not in err
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("se7-")}
    assert sorted(rows) == ["se7-1", "se7-2"], out  # every box, with its state
    assert all(r[1] == "aborted" for r in rows.values()), out
    assert any("sending" in r for r in rows.values()), out
