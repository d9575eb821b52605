"""preflight, doctor and inventory through the CLI against a mixed simulated fleet."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from click.testing import CliRunner

from provision.cli.main import cli
from provision.settings import load_settings
from sim.fleet import ssh_banner
from tests.sim.conftest import needs_root

pytestmark = [pytest.mark.sim, needs_root]


def invoke(*args, env=None):
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.output


def preflight_json(*args, env=None):
    code, output = invoke("preflight", "--json", "--connect-timeout", "2", *args, env=env)
    return code, json.loads(output)


def wait_down(fleet, name, timeout=10.0):
    address = fleet.state.box(name).address
    deadline = time.monotonic() + timeout
    while ssh_banner(address) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not ssh_banner(address), f"{name} still answers SSH {timeout} s after its power-off"


def by_host(doc):
    return {h["host"]: h for h in doc["hosts"]}


def codes(entry, key="reasons"):
    return [r["code"] for r in entry[key]]


def test_mixed_fleet_verdicts_reasons_schema_and_exit_codes(sim_fleet):
    fleet = sim_fleet(
        ["se7-factory", "se7-ready-int8", "se7-small", "se7-factory", "se7-factory", "se7-int4-only"]
    )
    fleet.fault("se7-4", "wrong-chip")
    fleet.fault("se7-5", "old-sdk")
    fleet.power_off("se7-6")
    wait_down(fleet, "se7-6")
    inv = str(fleet.inventory_path)

    code, doc = preflight_json("-i", inv)
    assert code == 4
    assert doc["schema"] == "sophon-fleet/preflight/v1" and doc["result"] == "unreachable"
    hosts = by_host(doc)
    assert {name: h["status"] for name, h in hosts.items()} == {
        "se7-1": "ready-int4",  # factory heaps: npu + vpp 7022 MiB (the README's sum, 9070, would say int8)
        "se7-2": "ready-int8",
        "se7-3": "needs-memory-layout",
        "se7-4": "blocked",
        "se7-5": "blocked",
        "se7-6": "unreachable",
    }
    assert doc["summary"] == {
        "ready-int8": 1,
        "ready-int4": 1,
        "needs-memory-layout": 1,
        "blocked": 2,
        "error": 0,
        "unreachable": 1,
    }
    small = hosts["se7-3"]
    assert codes(small) == ["heaps-too-small"] and small["variant"] == "int8"
    assert small["suggested_layout"] == {
        "npu": 7615,
        "vpu": 3071,
        "vpp": 3071,
        "total": 13757,
        "usable": 10686,
        "variant": "int8",
        "max": {"npu": 7615, "vpu": 3071, "vpp": 4096, "total": 14782, "usable": 11711},
        "max_source": "assumed",
    }
    assert "max-unknown" in codes(small, "warnings")
    assert small["hint"].startswith("sophon-fleet memory apply --limit se7-3 --variant int8 ")
    assert small["facts"]["heaps"] == {
        "now": {"npu": 1024, "vpu": 1024, "vpp": 1536, "total": 3584, "usable": 2560},
        "max": None,
        "source": "debugfs",
        "memory_edit_version": None,
    }
    assert hosts["se7-4"]["reasons"][0] == {
        "code": "wrong-chip",
        "message": "chip is bm1684; glm4-9b needs bm1684x",
    }
    assert codes(hosts["se7-5"]) == ["old-sdk"]
    assert "libsophon 0.4.9 (SDK V23.07.01) is older than 0.5.1" in hosts["se7-5"]["reasons"][0]["message"]
    assert (
        codes(hosts["se7-6"]) == ["unreachable"]
        and "connection refused" in hosts["se7-6"]["reasons"][0]["message"]
    )
    ready = hosts["se7-2"]
    assert (
        ready["ready"] is True
        and ready["facts"]["libsophon"] == "0.5.1"
        and ready["facts"]["chip"] == "bm1684x"
    )
    assert ready["facts"]["python"].startswith("3.")
    assert ready["facts"]["heaps"]["now"]["usable"] == 10686

    # without the dark box: some not ready -> 3; only ready boxes -> 0
    assert preflight_json("-i", inv, "--limit", "!se7-6")[0] == 3
    assert preflight_json("-i", inv, "--limit", "se7-1,se7-2")[0] == 0
    # the int4-only box: ready for int4 under auto, needs a layout for int8
    fleet.power_on("se7-6")
    fleet.wait_ready(names=["se7-6"])
    code, doc = preflight_json("-i", inv, "--limit", "se7-6")
    assert code == 0 and doc["hosts"][0]["status"] == "ready-int4"
    code, doc = preflight_json("-i", inv, "--limit", "se7-6", "--variant", "int8")
    assert code == 3 and doc["hosts"][0]["status"] == "needs-memory-layout"

    # the table for people names every verdict and reason
    code, text = invoke("preflight", "-i", inv, "--limit", "se7-3,se7-4")
    assert code == 3
    assert "needs-memory-l" in text and "blocked" in text and "7615/3071/3071" in text


def test_doctor_support_block_and_json(sim_fleet):
    fleet = sim_fleet(["se7-factory"])
    inv = str(fleet.inventory_path)
    code, text = invoke("doctor", "se7-1", "-i", inv)
    assert code == 0
    for line in (
        "mode:         SoC",
        "chip:         bm1684x",
        "libsophon:    0.5.1",
        "SDK:          V24.04.01",
        "heaps now:    3950/2048/3072 MiB (npu/vpu/vpp), npu+vpp 7022 MiB, total 9070 MiB [debugfs]",
        "bm_version:",
        "  SophonSDK version: V24.04.01",
        "verdict:      ready-int4 (int4)",
    ):
        assert line in text
    code, output = invoke("doctor", "se7-1", "-i", inv, "--json")
    doc = json.loads(output)
    assert code == 0 and doc["schema"] == "sophon-fleet/doctor/v1"
    assert doc["facts"]["bm_version"]["packages"]["sophon-soc-libsophon"] == "0.5.1"
    assert doc["verdict"]["status"] == "ready-int4"
    assert doc["host"]["become_password"].startswith("file:")


def test_faults_disk_full_no_sail_link_down_and_wrong_sudo(sim_fleet, monkeypatch):
    fleet = sim_fleet(["se7-factory", "se7-factory", "se7-factory"])
    fleet.fault("se7-1", "disk-full")
    fleet.fault("se7-2", "no-sail")
    fleet.fault("se7-3", "link-down")
    code, doc = preflight_json("-i", str(fleet.inventory_path))
    hosts = by_host(doc)
    assert code == 4
    assert hosts["se7-1"]["status"] == "blocked" and codes(hosts["se7-1"]) == ["data-too-small"]
    assert hosts["se7-2"]["status"] == "ready-int4" and "no-sail" in codes(hosts["se7-2"], "warnings")
    # the box keeps a successful `import sophon.sail`; removing sail invalidates it, healing brings it back
    fleet.fault("se7-2", "heal")
    healed = by_host(preflight_json("-i", str(fleet.inventory_path), "--limit", "se7-2")[1])["se7-2"]["facts"]
    assert healed["sail"]["ok"] and "box" not in healed["replayed"]  # sail reinstalled: asked again
    again = by_host(preflight_json("-i", str(fleet.inventory_path), "--limit", "se7-2")[1])["se7-2"]["facts"]
    assert again["replayed"] == ["root", "box"] and again["sail"] == healed["sail"]
    fleet.fault("se7-2", "no-sail")
    entry = preflight_json("-i", str(fleet.inventory_path), "--limit", "se7-2")[1]["hosts"][0]
    assert entry["facts"]["sail"]["ok"] is False and "no-sail" in codes(entry, "warnings")
    assert (
        hosts["se7-3"]["status"] == "unreachable"
        and "no answer within 2 s" in hosts["se7-3"]["reasons"][0]["message"]
    )

    # a wrong sudo password: the heaps cannot be read, and the verdict says why
    data = yaml.safe_load(fleet.inventory_path.read_text())
    del data["defaults"]["become_password_file"]
    data["defaults"]["become_password_env"] = "SE7_SUDO"
    wrong = fleet.state.dir.parent / "wrong-sudo.yml"
    wrong.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("SE7_SUDO", "not-the-password")
    # the heaps this boot were read with the right password before: the box replays them, and still
    # checks the password
    code, doc = preflight_json("-i", str(wrong), "--limit", "se7-2")
    assert code == 3 and doc["hosts"][0]["facts"]["heaps"]["now"]["npu"] == 3950
    assert doc["hosts"][0]["facts"]["replayed"] == ["root"]  # the box part is not kept: no sail
    assert codes(doc["hosts"][0]) == ["sudo-wrong-password"]
    code, doc = preflight_json("-i", str(wrong), "--limit", "se7-2", "--fresh")
    entry = doc["hosts"][0]
    assert entry["facts"]["replayed"] == []
    assert code == 3 and entry["status"] == "blocked" and codes(entry) == ["sudo-wrong-password"]
    assert "sudo refused this password" in entry["reasons"][0]["message"]
    assert "not-the-password" not in json.dumps(doc)

    # no sudo password at all: `sudo -n` fails fast; -K asks once and the heaps are read
    del data["defaults"]["become_password_env"]
    wrong.write_text(yaml.safe_dump(data))
    code, doc = preflight_json("-i", str(wrong), "--limit", "se7-2", "--fresh")
    assert code == 3 and "none was given" in doc["hosts"][0]["reasons"][0]["message"]
    result = CliRunner().invoke(
        cli, ["preflight", "--json", "--fresh", "-K", "-i", str(wrong), "--limit", "se7-2"], input="linaro\n"
    )
    assert result.exit_code == 0, result.output
    assert '"status": "ready-int4"' in result.output

    # password login instead of a key, the password from an env var
    data["defaults"].pop("key")
    data["defaults"]["password_env"] = "SE7_SSH_PW"
    data["defaults"]["become_password_env"] = "SE7_SSH_PW"
    wrong.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("SE7_SSH_PW", "linaro")
    code, doc = preflight_json("-i", str(wrong), "--limit", "se7-2")
    assert code == 0 and doc["hosts"][0]["status"] == "ready-int4"


def test_host_keys_unknown_refused_accept_new_pins_changed_refused(sim_fleet):
    fleet = sim_fleet(["se7-factory", "se7-small"])
    data = yaml.safe_load(fleet.inventory_path.read_text())
    del data["defaults"]["known_hosts"]  # trust nothing but our own known_hosts
    bare = fleet.state.dir.parent / "no-known-hosts.yml"
    bare.write_text(yaml.safe_dump(data))
    own = load_settings().known_hosts
    assert not own.exists()

    code, doc = preflight_json("-i", str(bare))
    assert code == 4
    for entry in doc["hosts"]:
        assert entry["status"] == "unreachable" and "unknown host key" in entry["reasons"][0]["message"]
        assert "--accept-new" in entry["hint"]
    assert not own.exists()

    code, doc = preflight_json("-i", str(bare), "--accept-new")
    assert code == 3 and {h["status"] for h in doc["hosts"]} == {"ready-int4", "needs-memory-layout"}
    pinned = own.read_text().splitlines()
    assert sorted(line.split()[0] for line in pinned) == sorted(b.address for b in fleet.boxes)

    assert preflight_json("-i", str(bare))[0] == 3  # pinned keys are trusted from now on
    assert own.read_text().splitlines() == pinned  # and not pinned twice

    # the box's key "changes": always refused, with both fingerprints and the fix
    address = fleet.state.box("se7-1").address
    forged = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    own.write_text(
        "".join(
            f"{address} ssh-ed25519 {forged}\n" if line.startswith(f"{address} ") else line + "\n"
            for line in pinned
        )
    )
    code, doc = preflight_json("-i", str(bare), "--accept-new")
    entry = by_host(doc)["se7-1"]
    assert code == 4 and entry["status"] == "unreachable"
    assert "HOST KEY CHANGED" in entry["reasons"][0]["message"]
    assert entry["reasons"][0]["message"].count("SHA256:") == 2
    assert f"ssh-keygen -R {address} -f {own}" in entry["hint"]


def test_inventory_command_masks_secrets(sim_fleet, tmp_path):
    fleet = sim_fleet(["se7-factory"])
    code, output = invoke("inventory", "-i", str(fleet.inventory_path), "--json")
    doc = json.loads(output)
    assert code == 0 and doc["hosts"][0]["become_password"].startswith("file:")
    assert "linaro\n" not in output
    bad = tmp_path / "bad.yml"
    bad.write_text("hosts:\n  se7-1: {address: 10.0.0.1, port: seventy}\n")
    code, output = invoke("preflight", "-i", str(bad))
    assert code == 2 and f"{bad}:2: hosts.se7-1.port: must be a port number" in output


def test_airbox_kit_gives_the_boxs_own_max(sim_fleet):
    fleet = sim_fleet(["airbox"])
    inv = str(fleet.inventory_path)
    code, text = invoke("doctor", "se7-1", "-i", inv)
    assert code == 0
    assert "heaps max:    7615/3071/4096 MiB (npu/vpu/vpp), npu+vpp 11711 MiB, total 14782 MiB" in text
    assert "memory_edit:  /opt/sophon/memory_edit/memory_edit.sh (v2.12)" in text
    # the factory heaps hold int4, not int8: the layout for int8 comes from the box's own max
    code, doc = preflight_json("-i", inv, "--variant", "int8")
    entry = doc["hosts"][0]
    assert code == 3 and entry["status"] == "needs-memory-layout"
    assert entry["suggested_layout"]["max_source"] == "memory_edit"
    max_heaps = {"npu": 7615, "vpu": 3071, "vpp": 4096, "total": 14782, "usable": 11711}
    assert entry["suggested_layout"]["max"] == max_heaps
    assert (
        entry["suggested_layout"]["npu"],
        entry["suggested_layout"]["vpu"],
        entry["suggested_layout"]["vpp"],
    ) == (7615, 3071, 3071)
    assert entry["facts"]["heaps"]["memory_edit_version"] == "2.12"
    assert "max-unknown" not in codes(entry, "warnings")
