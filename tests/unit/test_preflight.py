import dataclasses
import json
from pathlib import Path

import pytest

from provision.errors import ConnectError, FactError
from provision.facts.parse import PythonFacts, parse_probe
from provision.facts.preflight import SCHEMA, PreflightReport, Status, failed_verdict, judge, report_json
from provision.inventory.hosts import Host
from provision.manifest import load_manifest
from provision.memory.layout import Layout

MANIFEST = load_manifest("glm4-9b")
HOST = Host(name="se7-1", address="10.0.0.1")
GiB = 1024**3


def base_facts():
    case = json.loads((Path(__file__).parent.parent / "facts/probe/se7_factory.json").read_text())
    return dataclasses.replace(parse_probe(case["output"]), assets=())


def facts(**changes):
    return dataclasses.replace(base_facts(), **changes)


def ready_int8(**changes):
    """The factory box's facts with the vendor's recommended layout (npu + vpp 10686 MiB)."""
    return facts(heaps_now=Layout(7615, 3071, 3071), **changes)


def codes(reasons):
    return [r.code for r in reasons]


def test_factory_box_is_ready_for_int4_not_the_int8_the_readme_promises():
    """3950/2048/3072: npu + vpu + vpp = 9070 meets the sample README's int8 7168, but the runtime allocates
    from npu + vpp only (7022 MiB), and GLM-4-9B int8 needs 10045 of it."""
    verdict = judge(HOST, facts(), MANIFEST)
    assert verdict.status == Status.READY_INT4 and verdict.variant == "int4"
    assert verdict.reasons == () and verdict.suggestion is None
    assert "max-unknown" not in codes(verdict.warnings)
    int8 = judge(HOST, facts(), MANIFEST, variant="int8")
    assert int8.status == Status.NEEDS_LAYOUT and int8.suggestion.layout == Layout(7615, 3071, 3071)
    assert int8.reasons[0].message == (
        "ion heaps 3950/2048/3072: npu+vpp 7022 MiB, below the 10045 MiB int8 needs"
    )


def test_the_threshold_is_met_by_npu_and_vpp_to_the_mib():
    assert judge(HOST, facts(heaps_now=Layout(7000, 0, 3045)), MANIFEST).status == Status.READY_INT8
    assert judge(HOST, facts(heaps_now=Layout(7000, 3071, 3044)), MANIFEST).status == Status.READY_INT4
    assert judge(HOST, facts(heaps_now=Layout(2860, 0, 3000)), MANIFEST).status == Status.READY_INT4
    assert judge(HOST, facts(heaps_now=Layout(2859, 3071, 3000)), MANIFEST).status == Status.NEEDS_LAYOUT


def test_int4_only_box():
    verdict = judge(HOST, facts(heaps_now=Layout(3072, 1024, 3072)), MANIFEST)
    assert verdict.status == Status.READY_INT4
    explicit = judge(HOST, facts(heaps_now=Layout(3072, 1024, 3072)), MANIFEST, variant="int8")
    assert explicit.status == Status.NEEDS_LAYOUT and explicit.variant == "int8"
    assert explicit.suggestion.layout == Layout(7615, 3071, 3071)


def test_small_box_needs_a_layout_from_its_own_max():
    verdict = judge(
        HOST, facts(heaps_now=Layout(1024, 1024, 1536), heaps_max=Layout(7615, 3071, 4096)), MANIFEST
    )
    assert verdict.status == Status.NEEDS_LAYOUT
    assert codes(verdict.reasons) == ["heaps-too-small"]
    assert "npu+vpp 2560 MiB, below the 10045 MiB int8 needs" in verdict.reasons[0].message
    assert verdict.suggestion.layout == Layout(7615, 3071, 3071)
    assert verdict.suggestion.max_source == "memory_edit"
    assert "max-unknown" not in codes(verdict.warnings)
    assert verdict.hint.startswith(f"sophon-fleet memory apply --limit {HOST.name} --variant int8 ")


def test_v2_9_max_allows_the_readme_layout():
    verdict = judge(
        HOST, facts(heaps_now=Layout(1024, 1024, 1536), heaps_max=Layout(7615, 3072, 4096)), MANIFEST
    )
    assert verdict.suggestion.layout == Layout(7615, 3072, 3072)


def test_without_a_kit_the_max_is_a_labelled_assumption():
    verdict = judge(HOST, facts(heaps_now=Layout(1024, 1024, 1536)), MANIFEST)
    assert verdict.suggestion.max_source == "assumed"
    assert verdict.suggestion.layout == Layout(7615, 3071, 3071)
    assert "memory_edit.sh -p" in next(w.message for w in verdict.warnings if w.code == "max-unknown")


def test_wrong_chip_blocks():
    verdict = judge(HOST, facts(cpu_model="bm1684", dts="bm1684_se5_v1.dtb"), MANIFEST)
    assert verdict.status == Status.BLOCKED
    assert verdict.reasons[0].message == "chip is bm1684; glm4-9b needs bm1684x"


def test_old_sdk_blocks():
    old = base_facts()
    bm = dataclasses.replace(old.bm_version, sdk="V23.07.01")
    verdict = judge(HOST, facts(libsophon="0.4.9", bm_version=bm), MANIFEST)
    assert verdict.status == Status.BLOCKED
    assert verdict.reasons[0].code == "old-sdk"
    assert "libsophon 0.4.9 (SDK V23.07.01) is older than 0.5.1 (SDK V24.04.01)" in verdict.reasons[0].message


def test_lts_line_with_new_libsophon_only_warns():
    old = base_facts()
    bm = dataclasses.replace(old.bm_version, sdk="v23.09 LTS-SP5")
    verdict = judge(HOST, ready_int8(bm_version=bm, libsophon="0.5.1"), MANIFEST)
    assert verdict.status == Status.READY_INT8 and "sdk-line" in codes(verdict.warnings)


@pytest.mark.parametrize(
    "python, code",
    [
        (PythonFacts(None, False, "python3 did not run"), "no-python"),
        (PythonFacts("3.6.9", False, "x"), "old-python"),
    ],
)
def test_python_blocks(python, code):
    verdict = judge(HOST, facts(python=python), MANIFEST)
    assert verdict.status == Status.BLOCKED and code in codes(verdict.reasons)


def test_no_sail_only_warns():
    verdict = judge(
        HOST,
        ready_int8(python=PythonFacts("3.8.2", False, "ModuleNotFoundError: No module named 'sophon'")),
        MANIFEST,
    )
    assert verdict.status == Status.READY_INT8 and "no-sail" in codes(verdict.warnings)


def test_full_data_blocks():
    verdict = judge(HOST, facts(disk_free_mib={"/": 100, "/data": 0, "/boot": 80}), MANIFEST)
    assert verdict.status == Status.BLOCKED
    assert verdict.reasons[0].message == "/data has 0 MiB free; at least 256 MiB is needed"


def test_known_sizes_decide_data_and_warn_about_heaps():
    sizes = {"bmodel-int8": 11 * GiB, "token-config": 5 * 1024**2, "sail-wheel": 30 * 1024**2}
    verdict = judge(HOST, ready_int8(disk_free_mib={"/data": 9000}), MANIFEST, file_sizes=sizes)
    assert verdict.status == Status.BLOCKED
    assert verdict.reasons[0].message == "/data has 9000 MiB free; the int8 files need 11299 MiB"
    assert "heaps-below-bmodel" in codes(verdict.warnings)
    assert "needs 11284 MiB, more than the 10686 MiB of npu+vpp heaps" in verdict.warnings[-1].message
    sizes["bmodel-int8"] = 10 * GiB  # 10240 + 20 MiB of KV cache fit in 10686
    roomy = judge(HOST, ready_int8(disk_free_mib={"/data": 12000}), MANIFEST, file_sizes=sizes)
    assert roomy.status == Status.READY_INT8 and "heaps-below-bmodel" not in codes(roomy.warnings)


def test_unknown_sizes_warn_from_the_estimate():
    verdict = judge(HOST, ready_int8(disk_free_mib={"/data": 2048}), MANIFEST)
    assert verdict.status == Status.READY_INT8 and "data-maybe-small" in codes(verdict.warnings)


def test_unreadable_heaps_block_with_the_reason():
    broken = facts(heaps_now=None, problems=("heaps: sudo refused (a password is required): give ...",))
    verdict = judge(HOST, broken, MANIFEST)
    assert verdict.status == Status.BLOCKED
    assert verdict.reasons[-1].message.startswith("cannot read the ion heap sizes (sudo refused")


def test_max_too_small_blocks():
    tiny = facts(heaps_now=Layout(1000, 500, 500), heaps_max=Layout(2000, 1000, 1000))
    verdict = judge(HOST, tiny, MANIFEST)
    assert verdict.status == Status.BLOCKED and codes(verdict.reasons) == ["max-too-small"]


def test_failed_hosts_and_json_schema():
    down = failed_verdict(HOST, ConnectError("se7-1: connection refused", hint="is sshd running"))
    broken = failed_verdict(Host(name="b", address="b"), FactError("truncated"))
    ready = judge(Host(name="c", address="c"), ready_int8(), MANIFEST)
    report = PreflightReport("glm4-9b", "auto", (down, broken, ready), 1.23456)
    doc = report_json(report)
    assert doc["schema"] == SCHEMA and doc["result"] == "unreachable"
    assert (
        doc["summary"]["unreachable"] == 1
        and doc["summary"]["error"] == 1
        and doc["summary"]["ready-int8"] == 1
    )
    assert [h["status"] for h in doc["hosts"]] == ["unreachable", "error", "ready-int8"]
    assert doc["hosts"][0]["reasons"] == [{"code": "unreachable", "message": "se7-1: connection refused"}]
    assert set(doc["hosts"][2]) == {
        "host",
        "address",
        "port",
        "status",
        "ready",
        "variant",
        "reasons",
        "warnings",
        "hint",
        "suggested_layout",
        "facts",
    }
    now = {"npu": 7615, "vpu": 3071, "vpp": 3071, "total": 13757, "usable": 10686}
    assert doc["hosts"][2]["facts"]["heaps"]["now"] == now
    json.dumps(doc)


def test_run_preflight_never_stops_on_a_bad_box():
    from provision.facts.preflight import run_preflight
    from tests.fakes import Reply, ScriptedTransport

    case = json.loads((Path(__file__).parent.parent / "facts/probe/se7_factory.json").read_text())
    hosts = [Host(name=n, address=n) for n in ("good", "down", "garbage", "wants-int8")]

    class FakeConnector:
        def transport(self, host):
            if host.name == "down":
                raise ConnectError(f"{host.name}: connection refused", hint="is sshd running")
            output = "no marker" if host.name == "garbage" else case["output"]
            return ScriptedTransport([Reply(r"^sh -c ", output)], host=host)

    hosts[3] = dataclasses.replace(hosts[3], variant="int8")  # the inventory's per-host variant
    report = run_preflight(hosts, FakeConnector(), MANIFEST, forks=2)
    assert [v.status for v in report.verdicts] == [
        Status.READY_INT4,
        Status.UNREACHABLE,
        Status.ERROR,
        Status.NEEDS_LAYOUT,
    ]
    assert report.worst == "unreachable"
    assert report.verdicts[2].reasons[0].code == "probe-failed"


def test_sizes_come_from_the_models_pins(tmp_path):
    from provision.cli.preflight import lock_sizes
    from provision.manifest import MODELS_DIR

    manifest_path = tmp_path / "glm4-9b.yaml"
    manifest_path.write_text((MODELS_DIR / "glm4-9b.yaml").read_text())
    manifest = load_manifest(str(manifest_path))
    assert lock_sizes(manifest) == {}
    from provision.assets.pins import default_pins_path

    pins = default_pins_path(manifest)
    pins.parent.mkdir(parents=True)
    pins.write_text(
        "model: glm4-9b\nfiles:\n  bmodel-int8:\n    size: 10737418240\n    sha256: " + "a" * 64 + "\n"
    )
    assert lock_sizes(load_manifest(str(manifest_path))) == {"bmodel-int8": 10 * GiB}


def test_no_sail_warning_is_dropped_when_the_runtime_carries_its_own():
    no_sail = PythonFacts("3.8.2", False, "ModuleNotFoundError: No module named 'sophon'")
    verdict = judge(HOST, facts(python=no_sail, runtime="0.1.0-ab12cd-sail"), MANIFEST)
    assert "no-sail" not in codes(verdict.warnings)
