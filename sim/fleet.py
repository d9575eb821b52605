"""Bring a simulated fleet up and down, inspect it, reboot boxes and inject faults.

`Fleet.up()` records every resource in the state directory *before* creating it, so `Fleet.down()` (or
`sophon-fleet sim down`) removes everything — namespaces, links, the safety route, mounts, processes —
even after the simulator itself crashed.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from provision.errors import ConfigError, SimError
from provision.memory.layout import Layout, layout_json
from provision.settings import load_settings
from sim import box as boxmod
from sim import hw as hwmod
from sim import itb, mirrornode, net, vendor
from sim.hw import BoxHardware
from sim.mirror import SIM_MODEL
from sim.profiles import Profile, get_profile
from sim.state import BoxRecord, FleetState, hw_lock, read_status

PASSWORD = "linaro"  # the factory password of real boxes (linaro/linaro)
SITE_PACKAGES = {"3.8": ("numpy==1.24.4",)}  # numpy as the boxes' Ubuntu 20.04 + pip has it
SITE_PACKAGES_OTHER = ("numpy>=1.26,<3",)  # a host interpreter standing in for 3.8
MIRROR_FAULTS = ("link-down", "link-up", "rate", "heal")
FAULTS = (
    "dark",
    "slow-boot",
    "link-down",
    "link-up",
    "rate",
    "disk-full",
    "old-sdk",
    "no-sail",
    "wrong-chip",
    "slow-tpu",
    "memedit-fails",
    "itb-corrupt",
    "itb-wrong-layout",
    "boot-heaps-short",
    "memedit-slow",
    "heal",
)


@dataclass(frozen=True)
class BoxView:
    """What `sim status` shows for a box."""

    name: str
    address: str
    profile: str
    state: str
    detail: str
    heaps: list[int]
    boot_id: str
    boot_count: int
    faults: list[str]
    role: str = "box"


class Fleet:
    """A simulated fleet rooted at a state directory."""

    def __init__(self, state: FleetState) -> None:
        self.state = state

    # ---- lifecycle -------------------------------------------------------------------------------------

    @classmethod
    def up(
        cls,
        state_dir: Path | str,
        profiles: list[Profile | str],
        *,
        mirror: bool = False,
        bmodel_size: int = 0,
        ready_timeout: float = 30.0,
        engine: str = "emulator",
    ) -> Fleet:
        """Create and boot one box per profile (and the mirror node when asked); returns when every sshd
        (and the mirror's HTTP server) answers. `bmodel_size` pads the mirror's stand-in bmodels. `engine`
        is the boxes' sophon.sail: the numpy emulator, or the vendor runtime on the cmodel, whose mirror then
        serves real compiled bmodels (see sim/vendor.py; the first such fleet of a machine installs them)."""
        require_root()
        if engine not in vendor.ENGINES:
            raise SimError(f"unknown engine {engine!r} (expected one of: {', '.join(vendor.ENGINES)})")
        state_dir = Path(state_dir)
        if (state_dir / "fleet.json").exists():
            raise SimError(
                f"a simulated fleet is already up in {state_dir}",
                hint=f"use it (-i {state_dir / 'inventory.yml'}), remove it with `sophon-fleet sim down "
                f"--state-dir {state_dir}`, or give another --state-dir for a second fleet",
            )
        state_dir.mkdir(parents=True, exist_ok=True)
        with net.allocation_lock():
            state = FleetState(dir=state_dir, k=net.free_fleet_index(), engine=engine)
            state.save()
            fleet = cls(state)
            fleet._claim_network()
        try:
            fleet._create(
                [get_profile(p) if isinstance(p, str) else p for p in profiles], mirror, bmodel_size
            )
            fleet.wait_ready(timeout=ready_timeout)
        except BaseException:
            fleet.down()
            raise
        return fleet

    @classmethod
    def load(cls, state_dir: Path | str) -> Fleet:
        return cls(FleetState.load(Path(state_dir)))

    def _create(self, profiles: list[Profile], mirror: bool, bmodel_size: int) -> None:
        st = self.state
        key = st.dir / "operator_key"
        boxmod.write_ed25519_key(key, comment="sophon-fleet-sim operator")
        password_file = st.dir / "become_password"
        password_file.write_text(PASSWORD + "\n")
        password_file.chmod(0o600)
        password_hash = shadow_hash(PASSWORD)
        self._mount_tmpfs(st.overlay_dir, size="4g")
        fleet_net = net.FleetNet(st.k)
        settings = load_settings()
        python = boxmod.box_python(settings.sim_python)
        st.python_version = python.version
        st.site = str(ensure_site(settings.sim_cache, python))
        compiled = None
        if st.engine == "cmodel":
            st.runtime_dir = str(vendor.ensure_runtime(settings.sim_cache))
            if bmodel_size:
                raise SimError("--bmodel-size pads stand-ins; the cmodel engine serves real compiled bmodels")
            compiled = vendor.ensure_compiled_standins(settings.sim_cache, settings.cache_dir)
        pub = key.with_suffix(".pub").read_text()
        for i, profile in enumerate(profiles, start=1):
            record = BoxRecord(f"se7-{i}", i, fleet_net.box_address(i), fleet_net.box_ns(i), profile.name)
            st.boxes.append(record)
            st.namespaces.append(record.netns)
            st.save()
            paths = st.box_paths(record.name)
            paths.dir.mkdir(parents=True, exist_ok=True)
            self._mount_tmpfs(paths.data, size=f"{profile.data_mib}m", mode="755")
            self._mount_tmpfs(paths.dir / "fs" / "boot", size=f"{profile.boot_mib}m", mode="755")
            boxmod.prepare(
                paths, record.name, profile, operator_pub=pub, password_hash=password_hash, python=python
            )
            self._install_engine(paths, profile.libsophon)
            os.chown(paths.data, boxmod.LINARO_UID, boxmod.LINARO_UID)  # like bmrt_setup.sh at every boot
            net.attach(fleet_net, record.netns, record.address)
        if mirror:
            self._create_mirror(fleet_net, pub, password_hash, bmodel_size, python, compiled)
        self._write_known_hosts()
        self._write_inventory()
        self._start_daemon()
        if mirror:
            self._start_mirror_http()

    def _create_mirror(
        self,
        fleet_net: net.FleetNet,
        pub: str,
        password_hash: str,
        bmodel_size: int,
        python: boxmod.BoxPython,
        compiled: Path | None = None,
    ) -> None:
        """The mirror node: a box-like namespace with the SFTP account `open`, then the asset tree."""
        st = self.state
        record = BoxRecord(
            "mirror", 0, fleet_net.mirror_address, fleet_net.service_ns("mirror"), "mirror", "mirror"
        )
        st.boxes.append(record)
        st.namespaces.append(record.netns)
        st.save()
        paths = st.box_paths(record.name)
        boxmod.prepare(
            paths,
            record.name,
            get_profile("se7-factory"),
            operator_pub=pub,
            password_hash=password_hash,
            python=python,
        )
        sftp_hash = shadow_hash(mirrornode.SFTP_PASSWORD)
        boxmod.add_sftp_user(paths, mirrornode.SFTP_USER, sftp_hash)
        tree = mirrornode.build_tree(paths.dir / "fs" / "srv", bmodel_size=bmodel_size, compiled=compiled)
        (st.dir / "models").mkdir(exist_ok=True)
        self.manifest_path.write_text(mirrornode.manifest_text(tree, self.mirror_url, record.address))
        net.attach(fleet_net, record.netns, record.address)

    def _install_engine(self, paths: boxmod.BoxPaths, libsophon: str) -> None:
        """A cmodel box's sophon.sail is the vendor runtime's (the emulator is what `prepare` put there)."""
        if self.state.engine == "cmodel" and self.state.runtime_dir:
            vendor.install_cmodel_sail(paths.opt_sophon, libsophon, Path(self.state.runtime_dir))

    def _start_mirror_http(self) -> None:
        record = self.mirror
        assert record is not None
        root = self.state.box_paths(record.name).dir / "fs" / "srv"
        pid = mirrornode.spawn(
            mirrornode.http_command(record.netns, root, record.address), self.state.dir / "mirror.log"
        )
        self.state.helper_pids.append(pid)
        self.state.save()

    def _claim_network(self) -> None:
        """The hub (and the subnet's safety route) — made under the allocation lock, recorded first."""
        fleet_net = net.FleetNet(self.state.k)
        self.state.namespaces.append(fleet_net.hub)
        self.state.save()
        try:
            net.create_hub(fleet_net)
        except BaseException:
            self.down()
            raise

    def _mount_tmpfs(self, where: Path, *, size: str, mode: str = "700") -> None:
        where.mkdir(parents=True, exist_ok=True)
        self.state.mounts.append(str(where))
        self.state.save()
        run(["mount", "-t", "tmpfs", "-o", f"size={size},mode={mode}", "sophon-fleet-sim", str(where)])

    def _start_daemon(self) -> None:
        """Start the daemon in its own session; no Popen object, so nothing warns when this process ends."""
        log = os.open(self.state.dir / "daemon.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, log, 1),
            (os.POSIX_SPAWN_DUP2, log, 2),
            (os.POSIX_SPAWN_CLOSE, log),
        ]
        try:
            pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-m", "sim.daemon", str(self.state.dir)],
                env,
                file_actions=actions,
                setsid=True,
            )
        finally:
            os.close(log)
        self.state.daemon_pid = pid
        self.state.save()

    def wait_ready(self, timeout: float = 30.0, names: list[str] | None = None) -> None:
        """Wait until the sshd of every box (or of `names`) sends its banner."""
        deadline = time.monotonic() + timeout
        pending = [b for b in self.state.boxes if names is None or b.name in names]
        while pending:
            pending = [b for b in pending if not (ssh_banner(b.address) and self._service_ready(b))]
            if pending and time.monotonic() > deadline:
                raise SimError(
                    f"boxes not answering SSH after {timeout:.0f} s: {', '.join(b.name for b in pending)}",
                    hint=f"see {self.state.dir}/boxes/<box>/run/console.log",
                )
            if pending:
                time.sleep(0.02)

    def _service_ready(self, record: BoxRecord) -> bool:
        if record.role != "mirror" or not self.state.helper_pids:
            return True
        try:
            with socket.create_connection((record.address, mirrornode.HTTP_PORT), timeout=0.5):
                return True
        except OSError:
            return False

    def down(self) -> list[str]:
        """Remove everything the fleet made; returns what could not be removed (empty when clean)."""
        st = self.state
        left: list[str] = []
        self._stop_daemon()
        for pid in st.helper_pids:
            stop_process(pid)
        for ns in st.namespaces:
            kill_namespace_processes(ns)
        for record in st.boxes:
            if not boxmod.remove_cgroup(record.netns):
                left.append(f"cgroup {boxmod.cgroup_name(record.netns)}")
        left += net.destroy(net.FleetNet(st.k), [b.netns for b in st.boxes])
        for where in reversed(st.mounts):
            if os.path.ismount(where) and not unmount(where):
                left.append(f"mount {where}")
        if not left:
            shutil.rmtree(st.dir, ignore_errors=True)
        return left

    def _stop_daemon(self) -> None:
        pid = self.state.daemon_pid
        if not pid or not pid_alive(pid):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)  # reap it when this process started it
        except ChildProcessError:
            pass

    # ---- inspection ------------------------------------------------------------------------------------

    @property
    def inventory_path(self) -> Path:
        return self.state.dir / "inventory.yml"

    @property
    def boxes(self) -> list[BoxRecord]:
        """The simulated SE7 boxes (not the mirror node)."""
        return [b for b in self.state.boxes if b.role == "box"]

    @property
    def mirror(self) -> BoxRecord | None:
        return next((b for b in self.state.boxes if b.role == "mirror"), None)

    @property
    def mirror_url(self) -> str:
        return f"http://{net.FleetNet(self.state.k).mirror_address}/"

    @property
    def manifest_path(self) -> Path:
        """The glm4-9b-sim manifest pinned to the mirror's stand-ins (written when the fleet has a mirror)."""
        return self.state.dir / "models" / f"{SIM_MODEL}.yaml"

    def hardware(self, name: str) -> BoxHardware:
        return BoxHardware.load(self.state.box_paths(self.state.box(name).name).dir)

    def status(self) -> list[BoxView]:
        views = []
        for record in self.state.boxes:
            box_dir = self.state.box_paths(record.name).dir
            hw, status = BoxHardware.load(box_dir), read_status(box_dir)
            views.append(
                BoxView(
                    record.name,
                    record.address,
                    record.profile,
                    str(status.get("state")),
                    str(status.get("detail", "")),
                    hw.heaps,
                    hw.boot_id,
                    hw.boot_count,
                    hw.faults,
                    record.role,
                )
            )
        return views

    # ---- power and faults ------------------------------------------------------------------------------

    def request(self, name: str, word: str) -> None:
        """Send `reboot`, `off`, `on` or `heal` to the daemon for one box."""
        fifo = self.state.box_paths(self.state.box(name).name).power_fifo
        if not self.state.daemon_pid or not pid_alive(self.state.daemon_pid):
            raise SimError(
                "the fleet daemon is not running", hint="`sophon-fleet sim down` and `sim up` again"
            )
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, f"{word}\n".encode())
        finally:
            os.close(fd)

    def reboot(self, name: str, *, wait: bool = True, timeout: float = 30.0) -> str:
        """Power-cycle a box; with `wait`, return its new boot_id once sshd answers again."""
        before = self.hardware(name).boot_id
        self.request(name, "reboot")
        if not wait:
            return before
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hw = self.hardware(name)
            if hw.boot_id != before and read_status(self.state.box_paths(name).dir).get("state") == "up":
                self.wait_ready(timeout=max(0.1, deadline - time.monotonic()), names=[name])
                return hw.boot_id
            time.sleep(0.02)
        raise SimError(f"{name} did not come back within {timeout:.0f} s")

    def power_off(self, name: str) -> None:
        self.request(name, "off")

    def power_on(self, name: str) -> None:
        self.request(name, "on")

    def fault(self, name: str, fault: str, arg: str | None = None) -> str:
        """Inject (or with `heal`, clear) a fault on one box; returns a one-line description."""
        record = self.state.box(name)
        paths = self.state.box_paths(name)
        fleet_net = net.FleetNet(self.state.k)
        if fault not in FAULTS:
            raise ConfigError(f"unknown fault {fault!r} (known: {', '.join(FAULTS)})", key="FAULT")
        if record.role == "mirror" and fault not in MIRROR_FAULTS:
            raise ConfigError(
                f"the mirror node takes only {', '.join(MIRROR_FAULTS)}, not {fault!r}", key="FAULT"
            )
        if record.role == "mirror":
            return self._mirror_fault(record, fleet_net, fault, arg)
        with hw_lock(paths.dir):
            hw = BoxHardware.load(paths.dir)
            message = self._apply_fault(hw, paths, record, fleet_net, fault, arg)
            hw.save(paths.dir)
            hwmod.render(hw, paths.dir)
        if fault == "heal":
            self.request(name, "heal")
        return message

    def _mirror_fault(self, record: BoxRecord, fleet_net: net.FleetNet, fault: str, arg: str | None) -> str:
        """The mirror node has no hardware: only its link can be cut or limited."""
        if fault == "rate":
            mbit = _int_arg(fault, arg)
            net.set_rate(fleet_net, record.netns, mbit or None)
            return f"mirror: link limited to {mbit} Mbit/s" if mbit else "mirror: link unlimited"
        net.set_link(fleet_net, record.netns, record.address, up=fault != "link-down")
        if fault == "heal":
            net.set_rate(fleet_net, record.netns, None)
        return {"link-down": "mirror: link down", "link-up": "mirror: link up"}.get(fault, "mirror: healed")

    def _apply_fault(
        self,
        hw: BoxHardware,
        paths: boxmod.BoxPaths,
        record: BoxRecord,
        fleet_net: net.FleetNet,
        fault: str,
        arg: str | None,
    ) -> str:
        if fault == "heal":
            return self._heal(hw, paths, record, fleet_net, get_profile(record.profile))
        if fault in ("link-down", "link-up"):
            net.set_link(fleet_net, record.netns, record.address, up=fault == "link-up")
            _toggle(hw, "link-down", fault == "link-down")
            return f"{record.name}: link {'down' if fault == 'link-down' else 'up'}"
        if fault == "rate":
            mbit = _int_arg(fault, arg)
            net.set_rate(fleet_net, record.netns, mbit or None)
            _toggle(hw, "rate", bool(mbit))
            return (
                f"{record.name}: link limited to {mbit} Mbit/s" if mbit else f"{record.name}: link unlimited"
            )
        if fault == "slow-tpu":
            hw.tpu_delay_ms = _int_arg(fault, arg)
            _toggle(hw, "slow-tpu", bool(hw.tpu_delay_ms))
            return f"{record.name}: every TPU graph run takes {hw.tpu_delay_ms} ms"
        if fault == "slow-boot":
            hw.boot_delay_s = float(_int_arg(fault, arg))
            _toggle(hw, "slow-boot", True)
            return f"{record.name}: boots take {hw.boot_delay_s:g} s"
        if fault == "disk-full":
            fill_disk(paths.data)
        elif fault == "old-sdk":
            hw.sdk, hw.libsophon = "V23.07.01", "0.4.9"
            boxmod.install_libsophon(paths.opt_sophon, hw.libsophon)
        elif fault == "no-sail":
            boxmod.remove_sail(paths.opt_sophon)
        elif fault == "wrong-chip":
            # another board answers at this address: it has booted, so it has its own boot_id (boxes keep
            # per-boot facts such as the dts keyed by boot_id; a chip never changes within a boot)
            hw.chip, hw.dts, hw.boot_id = "bm1684", "bm1684_se5_v1.dtb", str(uuid.uuid4())
        _toggle(hw, fault, True)
        return f"{record.name}: {fault}"

    def _heal(
        self,
        hw: BoxHardware,
        paths: boxmod.BoxPaths,
        record: BoxRecord,
        fleet_net: net.FleetNet,
        profile: Profile,
    ) -> str:
        """Clear every fault; a box whose image cannot boot gets a factory image back, as after a reflash."""
        net.set_link(fleet_net, record.netns, record.address, up=True)
        net.set_rate(fleet_net, record.netns, None)
        (paths.data / ".sim-disk-full").unlink(missing_ok=True)
        if hw.chip != profile.chip:  # the original board is back (see wrong-chip)
            hw.boot_id = str(uuid.uuid4())
        hw.sdk, hw.libsophon, hw.chip = profile.sdk, profile.libsophon, profile.chip
        hw.boot_delay_s = profile.boot_delay_s
        hw.tpu_delay_ms = 0
        boxmod.install_libsophon(paths.opt_sophon, hw.libsophon)
        boxmod.install_sail(paths.opt_sophon)
        self._install_engine(paths, hw.libsophon)
        try:
            boxmod.boot_image(paths)
        except itb.InvalidImage:
            paths.boot_image.write_bytes(boxmod.factory_image(profile))
        hw.dts = boxmod.boot_image(paths).dts
        hw.faults = []
        return f"{record.name}: healed"

    # ---- files for the rest of the CLI -----------------------------------------------------------------

    def _write_known_hosts(self) -> None:
        lines = []
        for record in self.state.boxes:
            etc = self.state.box_paths(record.name).dir / "etc"
            key_type, key = (etc / "ssh_host_ed25519_key.pub").read_text().split()[:2]
            lines.append(f"{record.address} {key_type} {key}")
        (self.state.dir / "known_hosts").write_text("\n".join(lines) + "\n")

    def _write_inventory(self) -> None:
        st = self.state
        doc = {
            "defaults": {
                "user": "linaro",
                "port": 22,
                "key": str(st.dir / "operator_key"),
                "known_hosts": str(st.dir / "known_hosts"),
                "become_password_file": str(st.dir / "become_password"),
            },
            "groups": {"sim": {"hosts": [b.name for b in self.boxes]}},
            "hosts": {b.name: {"address": b.address} for b in self.boxes},
        }
        if self.mirror is not None:  # its manifest, pinned to the mirror: the inventory alone is enough
            doc["models"] = str(self.manifest_path.parent)
            doc["model"] = self.manifest_path.stem
        header = f"# Simulated fleet (sophon-fleet sim up), state in {st.dir}\n"
        self.inventory_path.write_text(header + yaml.safe_dump(doc, sort_keys=False))


def _toggle(hw: BoxHardware, fault: str, on: bool) -> None:
    if on and fault not in hw.faults:
        hw.faults.append(fault)
    if not on and fault in hw.faults:
        hw.faults.remove(fault)


def _int_arg(fault: str, arg: str | None) -> int:
    if arg is None or not arg.isdigit():
        raise ConfigError(f"fault {fault} needs a number, e.g. `sim fault se7-1 {fault} 100`", key="ARG")
    return int(arg)


def fill_disk(where: Path) -> None:
    """Take every free byte of a filesystem with one file, so writes fail with ENOSPC."""
    stats = os.statvfs(where)
    filler = where / ".sim-disk-full"
    with open(filler, "ab") as handle:
        os.posix_fallocate(
            handle.fileno(), 0, max(1, stats.f_bavail * stats.f_frsize + filler.stat().st_size)
        )


def ensure_site(cache: Path, python: boxmod.BoxPython) -> Path:
    """The packages the boxes' SAIL emulator needs (numpy) for the boxes' python3, installed once per
    machine into `cache` (SOPHON_FLEET_SIM_CACHE) and readable by every box user.

    Raises:
        SimError: pip could not install them (no PyPI and no pip mirror).
    """
    site = cache / f"site-py{python.version}"
    if (site / ".complete").exists():
        return site
    cache.mkdir(parents=True, exist_ok=True)
    cache.chmod(0o755)  # box users (linaro) read the site through a bind mount
    with open(cache / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several fleets may come up at once
        if not (site / ".complete").exists():
            tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f"{site.name}."))
            packages = SITE_PACKAGES.get(python.version, SITE_PACKAGES_OTHER)
            pip = [python.path, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target"]
            done = subprocess.run([*pip, str(tmp), *packages], capture_output=True, text=True)
            if done.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                raise SimError(
                    f"could not install {', '.join(packages)} for the boxes' python3 {python.path}: "
                    f"{(done.stderr or done.stdout).strip()[-400:]}",
                    hint="the simulator needs PyPI (or a pip mirror in pip.conf) once per machine",
                )
            _readable_by_all(tmp)
            (tmp / ".complete").write_text("ok\n")
            shutil.rmtree(site, ignore_errors=True)
            os.replace(tmp, site)
    return site


def _readable_by_all(tree: Path) -> None:
    """mkdtemp makes 0700 dirs and a umask may strip the rest: every box user must read the site."""
    for root, _dirs, files in os.walk(tree):
        os.chmod(root, 0o755)
        for name in files:
            path = os.path.join(root, name)
            os.chmod(path, os.stat(path).st_mode | 0o444)


def ssh_banner(address: str, port: int = 22, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def kill_namespace_processes(ns: str) -> None:
    proc = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    for pid in proc.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def stop_process(pid: int) -> None:
    """SIGKILL a helper we spawned and reap it if it is our child."""
    if pid_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return False


def shadow_hash(password: str) -> str:
    """A SHA-512 crypt hash for /etc/shadow (the box's sshd and sudo check it)."""
    return run(["openssl", "passwd", "-6", password]).stdout.strip()


def unmount(where: str) -> bool:
    """Unmount, lazily if something still holds it; False when neither works."""
    return any(run(["umount", *flags, where], check=False).returncode == 0 for flags in ([], ["-l"]))


def require_root() -> None:
    if os.geteuid() != 0:
        raise SimError("the simulated fleet needs root (network and mount namespaces)", hint="run as root")


def run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SimError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def describe(view: BoxView) -> dict[str, object]:
    """A box for `sim status --json`: heaps named as everywhere else ({npu, vpu, vpp, total, usable} MiB)."""
    doc = asdict(view)
    doc["heaps"] = layout_json(Layout(*view.heaps))
    return doc
