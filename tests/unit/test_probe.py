"""The probe's per-boot cache, run for real under /bin/sh with a stand-in python3 that counts its runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from provision.facts.parse import parse_probe
from provision.facts.probe import probe_script

FAKE_PYTHON = """#!/bin/sh
echo run >> "{count}"
echo "python 3.8.18"
if [ -e "{sail}" ]; then echo "sail ok"; echo "path {sail}"; else echo "sail error ImportError: no sail"; fi
"""


@pytest.fixture
def box(tmp_path: Path):
    """Runs the probe with HOME and PATH of its own; returns (run, count of python3 runs, the sail file)."""
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    bin_dir.mkdir()
    home.mkdir()
    count, sail = tmp_path / "python-runs", tmp_path / "sail" / "__init__.py"
    sail.parent.mkdir()
    sail.write_text("# sail\n")
    python = bin_dir / "python3"
    python.write_text(FAKE_PYTHON.format(count=count, sail=sail))
    python.chmod(0o755)
    env = {"HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def run(*, fresh: bool = False) -> str:
        script = probe_script(with_password=False, fresh=fresh)
        proc = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)
        return proc.stdout

    def runs() -> int:
        return len(count.read_text().splitlines()) if count.exists() else 0

    return run, runs, sail


def test_a_successful_sail_import_is_replayed_until_a_file_it_depends_on_changes(box):
    run, runs, sail = box
    first = run()
    assert runs() == 1 and parse_probe(first).python.sail_ok
    second = run()
    assert runs() == 1, "the second probe of this boot replays the kept facts"
    assert parse_probe(first).replayed == () and parse_probe(second).replayed == ("box",)
    assert parse_probe(second).python == parse_probe(first).python
    assert parse_probe(second).kernel_release == parse_probe(first).kernel_release

    sail.write_text("# sail, reinstalled\n")  # another size: another key
    assert parse_probe(run()).python.sail_ok and runs() == 2
    run(fresh=True)
    assert runs() == 3, "fresh asks again"
    run()
    assert runs() == 3, "and keeps what it learnt"


def test_a_failed_sail_import_is_never_kept(box):
    run, runs, sail = box
    sail.unlink()
    assert parse_probe(run()).python.sail_error == "ImportError: no sail"
    run()
    assert runs() == 2
    sail.write_text("# sail\n")
    assert parse_probe(run()).python.sail_ok and runs() == 3
