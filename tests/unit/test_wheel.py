"""The wheel builds and, installed on its own, has what the tool needs beyond its modules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import provision, sim, chat
from pathlib import Path
from provision.manifest import load_manifest
site = Path(provision.__file__).parent.parent
assert site == Path(SITE), site
assert load_manifest("glm4-9b").model == "glm4-9b" and load_manifest("chatglm3-6b")
carried = ("sim/kit/memory_edit.sh", "sim/kit/memory_edit.py", "sim/boxinit.sh", "chat/__main__.py")
shared = "sim/sail_cmodel/sophon/_sail_common.py"  # a link in the tree, a file in the wheel
for rel in (*carried, shared):
    assert (site / rel).is_file(), rel
print("ok")
"""


def test_the_wheel_carries_manifests_kit_and_runtime(tmp_path):
    source = tmp_path / "src"  # a clean copy: setuptools would reuse a stale build/ in the checkout
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("provision", "chat", "sim", "models"):
        shutil.copytree(
            ROOT / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
        )
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    build = subprocess.run([*pip_wheel, "-w", str(tmp_path), "."], cwd=source, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("sophon_fleet-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOPHON_FLEET_", "PYTHON"))}
    env["PYTHONPATH"] = str(site)
    check = subprocess.run(
        [sys.executable, "-c", CHECK.replace("SITE", repr(str(site)))],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert check.stdout.strip() == "ok", check.stderr
