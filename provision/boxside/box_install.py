"""Runs on the box (Python 3.8, standard library only): install a runtime version's wheels into its venv.

    python3 box_install.py VERSION_DIR [WHEEL ...]

Creates `VERSION_DIR/venv` (`--system-site-packages`, so a SAIL installed on the box stays importable;
`--without-pip`, so no ensurepip or network is needed) and unpacks each wheel into the venv's
site-packages, as pip would for these wheels (purelib/platlib; no console scripts are needed). Prints one
JSON line: {"ok": true, "python": "...", "site": "..."}.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile


def site_packages(venv):
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    out = subprocess.check_output([os.path.join(venv, "bin", "python"), "-c", code])
    return out.decode().strip()


def unpack_wheel(wheel, site):
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            parts = member.split("/")
            if member.startswith("/") or ".." in parts:
                raise ValueError(f"unsafe member {member!r} in {wheel}")
        archive.extractall(site)
    for entry in os.listdir(site):
        if not entry.endswith(".data"):
            continue
        data = os.path.join(site, entry)
        for scheme in ("purelib", "platlib"):
            src = os.path.join(data, scheme)
            if os.path.isdir(src):
                for name in os.listdir(src):
                    shutil.move(os.path.join(src, name), os.path.join(site, name))
        shutil.rmtree(data)


def main(argv):
    version_dir, wheels = argv[1], argv[2:]
    venv = os.path.join(version_dir, "venv")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.check_call([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv])
    site = site_packages(venv)
    for wheel in wheels:
        unpack_wheel(os.path.join(version_dir, wheel), site)
    print(json.dumps({"ok": True, "python": sys.version.split()[0], "site": site}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
