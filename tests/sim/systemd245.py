"""Ubuntu 20.04's own systemd 245 (what the boxes run), to check units with its `systemd-analyze verify`.

Fetched once per machine from Ubuntu's archive, pinned by sha256, into the sim cache; only the two files
`verify` needs are kept (`systemd-analyze` and `libsystemd-shared-245.so`, ~3 MB). Nothing is committed.
Debian 12's systemd 252 knows every directive 245 knows and more, so verifying with 252 alone cannot show
that a unit does not lean on something newer; 245 warns "Unknown key name" for those (and exits 0).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

from sim.vendor import made_once

DEB_URL = "http://archive.ubuntu.com/ubuntu/pool/main/s/systemd/systemd_245.4-4ubuntu3_amd64.deb"
DEB_SHA256 = "f081921d83e6378aee0576a1e3f1339a35c9302c46fc501b087cd762145597d8"
FILES = {
    "systemd-analyze": "usr/bin/systemd-analyze",
    "libsystemd-shared-245.so": "lib/systemd/libsystemd-shared-245.so",
}


def ensure_systemd_245(sim_cache: Path) -> Path:
    """The directory holding systemd 245's systemd-analyze and its shared library (fetched on first use)."""

    def build(tmp: Path) -> None:
        deb = tmp / "systemd.deb"
        with urllib.request.urlopen(DEB_URL, timeout=120) as response, open(deb, "wb") as out:
            shutil.copyfileobj(response, out)
        digest = hashlib.sha256(deb.read_bytes()).hexdigest()
        assert digest == DEB_SHA256, f"{DEB_URL}: sha256 {digest}, pinned {DEB_SHA256}"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "root")], check=True)
        for name, member in FILES.items():
            shutil.copy2(tmp / "root" / member, tmp / name)
            os.chmod(tmp / name, 0o755)
        deb.unlink()
        shutil.rmtree(tmp / "root")

    return made_once(sim_cache, sim_cache / "systemd-245.4-4ubuntu3", build)


def verify_command(tools: Path, unit: str) -> str:
    """A shell command running systemd 245's `systemd-analyze verify` on `unit` (tools visible at `tools`)."""
    return f"LD_LIBRARY_PATH={tools} SYSTEMD_COLORS=0 {tools}/systemd-analyze verify {unit} 2>&1; echo rc=$?"
