"""`assets push` against the simulated fleet: real sshd, the box's Python 3.8, its own /data (tmpfs)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from provision.assets.cache import Cache
from provision.assets.download import pull
from provision.assets.pins import load_pins
from provision.assets.push import BoxTarget, push_fleet
from provision.errors import ChannelBroken, DiskFullError
from provision.manifest import load_manifest
from provision.ssh.transport import Exec
from sim.mirror import BMODELS, Faults, Mirror, build_asset_tree
from tests.py38 import box_python_version
from tests.sim.conftest import connect, needs_root, run

pytestmark = [pytest.mark.sim, needs_root]

SIZE = 24 << 20
ROOT = "/data/sophon-fleet/models"


class BoxLink:
    """Opens SSH exec channels to one simulated box; `cut_after` drops the whole connection once a channel
    (the probe's session, which takes the first file) has carried that many bytes."""

    def __init__(self, fleet, name, cut_after=None):
        self.fleet, self.name, self.cut_after = fleet, name, cut_after
        self.client = None
        self.opened = 0

    def __call__(self, command):
        transport = self.client.get_transport() if self.client else None
        if transport is None or not transport.is_active():
            self.client = connect(self.fleet, self.name)
        chan = self.client.get_transport().open_session()
        chan.settimeout(300)
        chan.exec_command(command)
        self.opened += 1
        channel = Exec(self.name, command, chan)
        if self.cut_after is not None:
            sent = [0]
            send = channel.send

            def cutting(data):
                if self.cut_after is not None and sent[0] + len(data) > self.cut_after:
                    self.cut_after = None
                    self.client.close()  # the link drops: the box's sshd ends the session
                    raise ChannelBroken("link cut")
                sent[0] += len(data)
                send(data)

            channel.send = cutting
        return channel

    def close(self):
        if self.client:
            self.client.close()


@pytest.fixture
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    tree = build_asset_tree(root, bmodel_size=SIZE)
    work = tmp_path_factory.mktemp("controller")
    (work / "glm4-9b-sim.yaml").write_text(tree.manifest_yaml())
    manifest = load_manifest(work / "glm4-9b-sim.yaml")
    lock = load_pins(manifest)
    cache = Cache(work / "cache")
    pull(manifest, ["int4", "int8"], cache=cache, lock=lock, mirrors=[f"file://{root}"], use_dfss=False)
    return tree, manifest, lock, cache


def test_push_three_boxes_one_link_cut_resumes_then_skips(sim_fleet, assets):
    tree, manifest, lock, cache = assets
    fleet = sim_fleet(["se7-factory", "se7-ready-int8", "se7-int4-only"])
    names = [b.name for b in fleet.boxes]
    links = {n: BoxLink(fleet, n, cut_after=(7 << 20) + 3 if n == names[1] else None) for n in names}
    variants = {names[0]: "int4", names[1]: "int8", names[2]: "int4"}
    try:
        targets = [BoxTarget(n, links[n], variants[n]) for n in names]
        results = push_fleet(manifest, targets, cache=cache, lock=lock, max_parallel=3, backoff=0.1)
        for name, result in results.items():
            assert not isinstance(result, Exception), (name, result)
            client = connect(fleet, name)
            vdir = f"{ROOT}/glm4-9b-sim/{variants[name]}"
            bmodel = BMODELS[variants[name]].rsplit("/", 1)[1]
            status, out = run(client, f"sha256sum {vdir}/{bmodel}; cat {vdir}/{bmodel}.verified; ls {vdir}")
            assert status == 0, out
            assert tree.files[BMODELS[variants[name]]][1] in out
            assert "token_config\n" in out and ".part" not in out
            status, out = run(client, "python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'")
            assert (status, out.strip()) == (0, box_python_version())  # the receiver ran on the box's 3.8
            client.close()
        cut = next(f for f in results[names[1]].files if f.name.endswith(".bmodel"))
        assert cut.attempts == 2
        assert SIZE <= cut.transferred <= SIZE + (8 << 20)  # at most one chunk sent twice
        again = push_fleet(manifest, targets, cache=cache, lock=lock, max_parallel=3)
        assert all(r.skipped and r.transferred == 0 for r in again.values())
    finally:
        for link in links.values():
            link.close()


def test_from_mirror_and_a_full_box(sim_fleet, assets):
    tree, manifest, lock, cache = assets
    fleet = sim_fleet(["se7-factory", "se7-factory"])
    full, fetching = (b.name for b in fleet.boxes)
    fleet.fault(full, "disk-full")
    host = f"10.213.{fleet.state.k}.1"
    links = {n: BoxLink(fleet, n) for n in (full, fetching)}
    try:
        with Mirror(tree.root, host=host) as mirror:
            mirror.faults = Faults(drop_after=(5 << 20) + 1, path=BMODELS["int4"])
            targets = [BoxTarget(n, links[n], "int4") for n in (full, fetching)]
            results = push_fleet(
                manifest,
                targets,
                cache=Cache(cache.root.parent / "none"),
                lock=lock,
                mirror=mirror.url,
                backoff=0.1,
            )
            assert isinstance(results[full], DiskFullError), results[full]
            ok = results[fetching]
            assert not isinstance(ok, Exception), ok
            bmodel = next(f for f in ok.files if f.name.endswith(".bmodel"))
            assert bmodel.status == "fetched" and bmodel.attempts == 2
            assert mirror.bytes_served(BMODELS["int4"]) == SIZE  # the resume re-fetched nothing
        client = connect(fleet, full)
        status, out = run(client, f"ls -R {ROOT} 2>&1 || true")
        client.close()
        assert ".bmodel" not in out.replace(".bmodel.part", "")  # nothing partial taken as complete
    finally:
        for link in links.values():
            link.close()


def kill_receiver(fleet, name: str) -> bool:
    """SIGKILL the box's receiver (`python3 -S -c <source>`), found among the box's network namespace's
    processes from the host: works while the box's link is down."""
    ns = fleet.state.box(name).netns
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            if b"\0-S\0-c\0" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(int(pid), signal.SIGKILL)
                return True
        except (OSError, ValueError):
            continue
    return False


class ReconnectingLink(BoxLink):
    """Like transport.open_exec: a short probe of the old connection, else a new one."""

    def __call__(self, command):
        if self.client is not None:
            try:
                self.client.get_transport().open_session(timeout=2).close()
            except Exception:
                self.client.close()
                self.client = None
        if self.client is None:
            self.client = connect(self.fleet, self.name, timeout=10)
        chan = self.client.get_transport().open_session(timeout=5)
        chan.settimeout(3)
        chan.exec_command(command)
        self.opened += 1
        return Exec(self.name, command, chan)


def test_link_down_mid_push_completes_after_link_up(sim_fleet, assets):
    import threading
    import time

    tree, manifest, lock, cache = assets
    fleet = sim_fleet(["se7-factory", "se7-factory", "se7-factory"])
    names = [b.name for b in fleet.boxes]
    victim = names[1]
    fleet.fault(victim, "rate", "100")  # ~12 MB/s: the 24 MiB bmodel takes ~2 s, time to cut it
    part = (
        fleet.state.box_paths(victim).data
        / "sophon-fleet/models/glm4-9b-sim/int4/glm4-9b_int4_1dev.bmodel.part"
    )
    cut = threading.Event()

    def cut_the_link():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if part.exists() and part.stat().st_size >= 6 << 20:
                fleet.fault(victim, "link-down")
                # the box's end of the conversation dies during the outage, so when the link is back the
                # old channel cannot go on: the push must reconnect and resume from the box's .part
                assert kill_receiver(fleet, victim)
                cut.set()
                time.sleep(2)  # the outage lasts 2 s
                fleet.fault(victim, "link-up")
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=cut_the_link)
    watcher.start()
    links = {n: ReconnectingLink(fleet, n) for n in names}
    try:
        targets = [BoxTarget(n, links[n], "int4") for n in names]
        results = push_fleet(
            manifest, targets, cache=cache, lock=lock, max_parallel=3, backoff=1.0, retries=4
        )
        watcher.join()
        assert cut.is_set()
        for name, result in results.items():
            assert not isinstance(result, Exception), (name, result)
        bmodel = next(f for f in results[victim].files if f.name.endswith(".bmodel"))
        # a second attempt resumed from the box's .part (>= 6 MiB when the link went down): a restart from
        # zero would have sent at least SIZE + 6 MiB; only what was in flight is sent twice
        assert bmodel.attempts == 2 and bmodel.resumed_from == 0
        assert SIZE <= bmodel.transferred < SIZE + (6 << 20)
        client = connect(fleet, victim)
        status, out = run(client, f"sha256sum {ROOT}/glm4-9b-sim/int4/glm4-9b_int4_1dev.bmodel")
        client.close()
        assert tree.files[BMODELS["int4"]][1] in out
    finally:
        for link in links.values():
            link.close()
