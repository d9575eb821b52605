"""One simulated box: its directory on the host, its root filesystem layer, and its power.

Layout of a box directory `B` (host side; the box sees `B` at the same path, read-only use):
    B/etc/            sshd_config and host keys (kept across reboots)
    B/fs/boot         the box's /boot (emmcboot.itb, multi.its; a size-limited tmpfs standing in for FAT)
    B/fs/data         the box's /data (a size-limited tmpfs, so "disk full" is real)
    B/fs/opt_sophon   the box's /opt/sophon (libsophon-<ver>, libsophon-current, sophon-sail)
    B/hw/             hardware views (see sim.hw) and hw.json
    B/run/power       FIFO: `reboot`, `off`, `heal` requests to the fleet daemon
    B/root            mount point of the box's root (inside the box's namespaces only)
The box's root is an overlay over the host's `/` whose upper layer lives in the fleet's overlay tmpfs, so
changes inside the box (users, installed packages) persist across reboots and never touch the host.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from provision.errors import SimError
from sim import itb, kit_archive
from sim.hw import BoxHardware, render
from sim.profiles import Profile

BOXINIT = Path(__file__).with_name("boxinit.sh")
SAIL_EMULATOR = Path(__file__).with_name("sail")
LINARO_UID = 1000
PY38_CANDIDATES = ("/root/.pyenv/versions/3.8.18/bin/python3.8", "/usr/bin/python3.8")

SSHD_CONFIG = """\
ListenAddress 0.0.0.0:22
HostKey {etc}/ssh_host_ed25519_key
PidFile none
AuthorizedKeysFile .ssh/authorized_keys
PermitRootLogin no
PasswordAuthentication yes
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
Subsystem sftp internal-sftp
LogLevel ERROR
MaxStartups 100:30:200
MaxSessions 50
ClientAliveInterval 2
ClientAliveCountMax 3
"""

# systemd units of a simulated box (its /etc/systemd/system is an opaque overlay directory, so none of the
# host's enabled services leak in). Masked: whatever would touch the host's kernel state or /dev (udev,
# sysctl, modules, binfmt, static device nodes), consoles and logind (a box is reached over SSH only), the
# kernel file systems the box already has (its /sys/kernel/debug is the simulated ION view), and boot-time
# bookkeeping a simulated box does without (each costs 50-200 ms of CPU per boot, and 16 boxes boot at once
# on 2 cores): the journal stays volatile in /run, no utmp, no sysusers (the accounts are prepared).
MASKED_UNITS = (
    "systemd-udevd.service",
    "systemd-udev-trigger.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "getty@tty1.service",
    "console-getty.service",
    "getty.target",
    "systemd-logind.service",
    "ssh.service",
    "sshd.service",
    "systemd-timesyncd.service",
    "systemd-sysctl.service",
    "systemd-binfmt.service",
    "systemd-modules-load.service",
    "kmod-static-nodes.service",
    "systemd-tmpfiles-setup-dev.service",
    "systemd-remount-fs.service",
    "modprobe@.service",
    "systemd-random-seed.service",
    "systemd-firstboot.service",
    "systemd-repart.service",
    "systemd-pcrphase.service",
    "systemd-pcrphase-sysinit.service",
    "systemd-ask-password-wall.path",
    "systemd-ask-password-console.path",
    "systemd-hwdb-update.service",
    "ldconfig.service",
    "systemd-journal-catalog-update.service",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount",
    "dev-mqueue.mount",
    "proc-sys-fs-binfmt_misc.automount",
    "e2scrub_reap.service",
    "postgresql.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "systemd-journal-flush.service",
    "systemd-sysusers.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
    "systemd-user-sessions.service",
    "systemd-tmpfiles-setup.service",
    "systemd-tmpfiles-clean.timer",
)

SSHD_UNIT = """\
[Unit]
Description=OpenSSH server of the simulated box
# first thing at boot, in parallel with the rest (a box's network is up before its PID 1 starts)
DefaultDependencies=no

[Service]
ExecStart=/usr/sbin/sshd -D -e -f {etc}/sshd_config
StandardOutput=append:{run}/sshd.log
StandardError=append:{run}/sshd.log
RuntimeDirectory=sshd
RuntimeDirectoryPreserve=yes
Restart=always
RestartSec=0.2

[Install]
WantedBy=sysinit.target
"""

REBOOT = """\
#!/bin/sh
# Simulated box: ask the fleet daemon to power-cycle this box (kills PID 1; every session drops).
if [ "$(id -u)" != 0 ]; then echo "reboot: must be superuser." >&2; exit 1; fi
echo reboot > {power}
sleep 60
"""


@dataclass(frozen=True)
class BoxPaths:
    """Where one box keeps its files on the host."""

    dir: Path
    overlay: Path  # holds upper/ and work/ of the root overlay

    @property
    def upper(self) -> Path:
        return self.overlay / "upper"

    @property
    def power_fifo(self) -> Path:
        return self.dir / "run" / "power"

    @property
    def boot_image(self) -> Path:
        return self.dir / "fs" / "boot" / "emmcboot.itb"

    @property
    def data(self) -> Path:
        return self.dir / "fs" / "data"

    @property
    def opt_sophon(self) -> Path:
        return self.dir / "fs" / "opt_sophon"


@dataclass(frozen=True)
class BoxPython:
    """The interpreter a box runs as `python3`, and where its site-packages are."""

    path: str
    version: str  # "3.8"
    site_packages: str

    @property
    def like_a_real_box(self) -> bool:
        return self.version == "3.8"


def box_python(override: str | None = None) -> BoxPython:
    """CPython 3.8 like a real SE7 when this machine has one; else the host's own interpreter (a fleet
    engineer is warned: `chat/` is then not proven on 3.8). `override` (SOPHON_FLEET_SIM_PYTHON) forces one.

    Raises:
        SimError: the interpreter given cannot be run.
    """
    candidates = [override] if override else [p for p in PY38_CANDIDATES if os.access(p, os.X_OK)]
    path = candidates[0] if candidates else os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    probe = "import site, sys; print('%d.%d' % sys.version_info[:2]); print(site.getsitepackages()[0])"
    try:
        out = subprocess.run(
            [path, "-I", "-c", probe], capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SimError(f"the boxes' python3 {path} cannot run: {exc}") from exc
    version, site_packages = out.stdout.split()
    return BoxPython(path=path, version=version, site_packages=site_packages)


def prepare(
    paths: BoxPaths,
    name: str,
    profile: Profile,
    *,
    operator_pub: str,
    password_hash: str,
    python: BoxPython,
) -> BoxHardware:
    """Create a factory-fresh box on disk (not booted). Idempotent for the directory tree."""
    for sub in ("etc", "fs/boot", "fs/data", "fs/opt_sophon", "hw", "run", "root"):
        (paths.dir / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("upper", "work"):
        (paths.overlay / sub).mkdir(parents=True, exist_ok=True)
    _host_keys(paths.dir / "etc")
    (paths.dir / "etc" / "sshd_config").write_text(SSHD_CONFIG.format(etc=paths.dir / "etc"))
    if not paths.power_fifo.exists():
        os.mkfifo(paths.power_fifo, 0o622)
    _root_layer(paths, name, operator_pub=operator_pub, password_hash=password_hash, python=python)
    paths.boot_image.write_bytes(factory_image(profile))
    (paths.dir / "fs" / "boot" / "multi.its").write_text(itb.multi_its(profile.dts))
    install_libsophon(paths.opt_sophon, profile.libsophon)
    install_sail(paths.opt_sophon)
    if profile.preinstalled_kit:
        kit_archive.install_unpacked(paths.opt_sophon)
    hw = BoxHardware.from_profile(name, profile)
    hw.save(paths.dir)
    render(hw, paths.dir)
    return hw


def _host_keys(etc: Path) -> None:
    key = etc / "ssh_host_ed25519_key"
    if not key.exists():
        write_ed25519_key(key, comment=f"root@{etc.parent.name}")


def write_ed25519_key(path: Path, comment: str) -> None:
    """An OpenSSH ed25519 key pair (`path` 0600 and `path.pub`), made in-process: ssh-keygen costs ~150 ms."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public = private.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    path.with_name(path.name + ".pub").write_text(f"{public.decode()} {comment}\n")


def _system_lines(path: str) -> list[str]:
    """Host account lines that belong to the system (uid/gid < 1000 or nobody), not to its users."""
    keep = []
    for line in Path(path).read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[2].isdigit() and (int(fields[2]) < 1000 or int(fields[2]) >= 65534):
            keep.append(line)
    return keep


def _root_layer(
    paths: BoxPaths, name: str, *, operator_pub: str, password_hash: str, python: BoxPython
) -> None:
    """Files of the box's root overlay: the `linaro` user, sudo, reboot, python3, an empty .bashrc."""
    up = paths.upper
    etc = up / "etc"
    (etc / "sudoers.d").mkdir(parents=True, exist_ok=True)
    passwd = _system_lines("/etc/passwd")
    users = {line.split(":")[0] for line in passwd}
    shadow = [line for line in Path("/etc/shadow").read_text().splitlines() if line.split(":")[0] in users]
    group = _system_lines("/etc/group")
    (etc / "passwd").write_text(
        "\n".join([*passwd, f"linaro:x:{LINARO_UID}:{LINARO_UID}::/home/linaro:/bin/bash"]) + "\n"
    )
    (etc / "shadow").write_text("\n".join([*shadow, f"linaro:{password_hash}:20000:0:99999:7:::"]) + "\n")
    (etc / "shadow").chmod(0o640)
    (etc / "group").write_text("\n".join([*group, f"linaro:x:{LINARO_UID}:"]) + "\n")
    (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n")
    (etc / "hostname").write_text(name + "\n")
    sudoers = etc / "sudoers.d" / "linaro"
    sudoers.write_text("linaro ALL=(ALL:ALL) ALL\nDefaults:linaro !lecture\n")
    sudoers.chmod(0o440)
    home = up / "home" / "linaro"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    (home / ".bashrc").write_text("")
    (home / ".ssh" / "authorized_keys").write_text(operator_pub)
    for p in (home, home / ".ssh", home / ".bashrc", home / ".ssh" / "authorized_keys"):
        os.chown(p, LINARO_UID, LINARO_UID)
    sbin = up / "usr" / "sbin"
    sbin.mkdir(parents=True, exist_ok=True)
    for tool in ("reboot",):
        (sbin / tool).write_text(REBOOT.format(power=paths.power_fifo))
        (sbin / tool).chmod(0o755)
    (sbin / "bm_version").write_text(f"#!/bin/sh\ncat {paths.dir / 'hw' / 'bm_version.txt'}\n")
    (sbin / "bm_version").chmod(0o755)
    _python(up, python)
    _systemd_layer(up, paths)


def _systemd_layer(up: Path, paths: BoxPaths) -> None:
    """The box's systemd configuration: multi-user.target with sshd, a machine-id of its own, nothing else."""
    units = up / "etc" / "systemd" / "system"
    if units.is_dir():
        return  # a box's own /etc survives `prepare` again (its enabled services are its state)
    (units / "multi-user.target.wants").mkdir(parents=True)
    os.setxattr(units, "trusted.overlay.opaque", b"y")  # hide the host's enabled units from the box
    (units / "default.target").symlink_to("/lib/systemd/system/multi-user.target")
    for unit in MASKED_UNITS:
        (units / unit).symlink_to("/dev/null")
    (units / "sim-sshd.service").write_text(SSHD_UNIT.format(etc=paths.dir / "etc", run=paths.dir / "run"))
    (units / "sysinit.target.wants").mkdir()
    (units / "sysinit.target.wants" / "sim-sshd.service").symlink_to("../sim-sshd.service")
    generators = up / "etc" / "systemd" / "system-generators"
    generators.mkdir(parents=True, exist_ok=True)
    for generator in Path("/lib/systemd/system-generators").glob("*"):
        (generators / generator.name).symlink_to("/dev/null")  # no fstab, sysv or gpt units from the host
    (up / "etc" / "machine-id").write_text(uuid.uuid4().hex + "\n")


def _python(up: Path, python: BoxPython) -> None:
    """`python3` of the box (and `python3.X`), with the SAIL emulator and the sim's site importable."""
    (up / "root").mkdir(mode=0o711, exist_ok=True)
    (up / "root").chmod(0o711)  # the host's interpreters may live under /root (pyenv)
    bin_dir = up / "usr" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for link in ("python3", f"python{python.version}"):
        target = bin_dir / link
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(python.path)
    site = up / python.site_packages.lstrip("/")
    site.mkdir(parents=True, exist_ok=True)
    (site / "sophon-sim.pth").write_text("/opt/sophon/sophon-sail/python3\n/opt/sophon-sim-site\n")


SFTP_MATCH = """
Match User {user}
    ChrootDirectory /srv/dfss
    ForceCommand internal-sftp -d / -R
    AllowTcpForwarding no
    PasswordAuthentication yes
"""


def add_sftp_user(paths: BoxPaths, user: str, password_hash: str, uid: int = 1001) -> None:
    """A dfss-style read-only SFTP account (chrooted to /srv/dfss, which the box gets from B/fs/srv)."""
    etc = paths.upper / "etc"
    with open(etc / "passwd", "a") as handle:
        handle.write(f"{user}:x:{uid}:{uid}::/:/usr/sbin/nologin\n")
    with open(etc / "shadow", "a") as handle:
        handle.write(f"{user}:{password_hash}:20000:0:99999:7:::\n")
    with open(etc / "group", "a") as handle:
        handle.write(f"{user}:x:{uid}:\n")
    with open(paths.dir / "etc" / "sshd_config", "a") as handle:
        handle.write(SFTP_MATCH.format(user=user))
    (paths.dir / "fs" / "srv").mkdir(parents=True, exist_ok=True)


def install_libsophon(opt_sophon: Path, version: str) -> None:
    """`/opt/sophon/libsophon-<version>` and the `libsophon-current` link to it."""
    for sub in ("bin", "lib", "include"):
        (opt_sophon / f"libsophon-{version}" / sub).mkdir(parents=True, exist_ok=True)
    current = opt_sophon / "libsophon-current"
    tmp = opt_sophon / ".libsophon-current.tmp"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(f"/opt/sophon/libsophon-{version}")
    os.replace(tmp, current)


def install_sail(opt_sophon: Path) -> None:
    """The `sophon.sail` emulator where a SoC SAIL install would put its Python package."""
    target = opt_sophon / "sophon-sail" / "python3"
    if SAIL_EMULATOR.is_dir() and not target.exists():
        shutil.copytree(SAIL_EMULATOR, target, ignore=shutil.ignore_patterns("__pycache__"))


def remove_sail(opt_sophon: Path) -> None:
    shutil.rmtree(opt_sophon / "sophon-sail", ignore_errors=True)


def factory_image(profile: Profile) -> bytes:
    h = profile.heaps
    return itb.encode(itb.BootImage(profile.dts, (h.npu, h.vpu, h.vpp), tuple(profile.ddr_mib)))


def boot_image(paths: BoxPaths) -> itb.BootImage:
    """What the box boots with; itb.InvalidImage when /boot/emmcboot.itb cannot boot."""
    try:
        image = paths.boot_image.read_bytes()
    except OSError as exc:
        raise itb.InvalidImage(f"cannot read boot image: {exc.strerror}") from exc
    return itb.decode(image)


class PowerState:
    """A running box's process tree: `unshare` whose child is the box's PID 1 (sshd)."""

    def __init__(self, proc: subprocess.Popen[bytes], netns: str) -> None:
        self.proc, self.netns = proc, netns

    @classmethod
    def start(cls, paths: BoxPaths, name: str, netns: str, site: Path | None) -> PowerState:
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOST_UTS": os.readlink("/proc/self/ns/uts"),
            "SIM_SITE": str(site) if site else "",
            "SIM_CGROUP": cgroup_name(netns),
            "SIM_CGROUP_LAYOUT": "hybrid" if os.path.isdir("/sys/fs/cgroup/unified") else "unified",
        }
        log = open(paths.dir / "run" / "console.log", "ab")  # noqa: SIM115 - owned by the child
        cmd = [
            "ip",
            "netns",
            "exec",
            netns,
            "unshare",
            "--mount",
            "--uts",
            "--pid",
            "--fork",
            "--mount-proc",
            "--propagation",
            "private",
            "--",
            str(BOXINIT),
            str(paths.dir),
            name,
            str(paths.overlay),
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        return cls(proc, netns)

    def init_pid(self, timeout: float = 5.0) -> int | None:
        """PID (in the host's view) of the box's PID 1."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            except OSError:
                return None
            if children:
                return int(children[0])
            if self.proc.poll() is not None:
                return None
            time.sleep(0.005)
        return None

    def kill(self) -> None:
        """Power off: SIGKILL the box's PID 1, which takes every process of the box with it."""
        pid = self.init_pid(timeout=0.5)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        remove_cgroup(self.netns)


CGROUP_ROOTS = ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup")


def cgroup_name(netns: str) -> str:
    """The box's cgroup below each hierarchy root: its systemd manages everything under it."""
    return f"sophon-sim/{netns}"


def remove_cgroup(netns: str, timeout: float = 3.0) -> bool:
    """Remove the cgroup tree a powered-off box's systemd left (deepest first); False if some stayed busy.

    A killed box's processes leave their cgroups a moment after PID 1 is reaped, hence the short retry."""
    deadline = time.monotonic() + timeout
    for root in CGROUP_ROOTS:
        top = Path(root) / cgroup_name(netns)
        if not top.is_dir():
            continue
        for current, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
            while True:
                try:
                    os.rmdir(current)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        return False
                    time.sleep(0.01)
        with contextlib.suppress(OSError):  # still holds another fleet's boxes
            top.parent.rmdir()
    return True
