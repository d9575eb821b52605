"""Parsers on captured output: one test per fixture file in tests/facts/<fact>/<case>.json."""

import dataclasses
import json
import shlex
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provision.errors import FactError
from provision.facts.parse import (
    PARSERS,
    parse_bm_version,
    parse_probe,
    parse_root,
    version_tuple,
)
from provision.facts.probe import MARK, probe_script
from provision.memory.layout import Layout
from provision.memory.output import parse_memory_edit_p

FIXTURES = sorted((Path(__file__).parent.parent / "facts").glob("*/*.json"))


def plain(value):
    if isinstance(value, Layout):
        return [value.npu, value.vpu, value.vpp]
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return value


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_fixture(fixture):
    case = json.loads(fixture.read_text())
    parser = PARSERS[fixture.parent.name]
    expected = case["expected"]
    if "raises" in expected:
        with pytest.raises(FactError, match=expected["raises"].replace("(", r"\(").replace(")", r"\)")):
            parser(case["output"])
        return
    result = parser(case["output"])
    if "value" in expected:
        assert plain(result) == expected["value"]
        return
    for key, want in expected.items():
        assert plain(getattr(result, key)) == want, key


def test_there_are_fixtures_for_every_parser():
    assert {p.parent.name for p in FIXTURES} == set(PARSERS)


def test_real_aibox_capture_from_facts_md():
    case = json.loads((Path(__file__).parent.parent / "facts/memory_edit_p/aibox_v2_9.json").read_text())
    report = parse_memory_edit_p(case["output"])
    assert report.max == Layout(7615, 3072, 4096) and report.now == Layout(3950, 2048, 3072)


@given(st.text())
def test_memory_edit_garbage_is_a_fact_error_or_a_report(text):
    try:
        parse_memory_edit_p(text)
    except FactError:
        pass


@given(
    st.lists(
        st.sampled_from(
            [
                "Info: max npu size: 0x1dbf00000 [7615 MiB]",
                "Info: now vpu size: 0x0 [0 MiB]",
                "Error: x",
                "Warning: y",
                "INFO: version: 2.1",
                "garbage \x00",
                "",
            ]
        ),
        max_size=12,
    )
)
def test_memory_edit_line_soup_never_crashes(lines):
    try:
        parse_memory_edit_p("\n".join(lines))
    except FactError:
        pass


@given(st.text())
def test_bm_version_garbage(text):
    try:
        parse_bm_version(text)
    except FactError:
        pass


@given(st.text(), st.integers(min_value=0, max_value=4000))
def test_probe_garbage_and_truncation_never_crash(text, cut):
    case = json.loads((Path(__file__).parent.parent / "facts/probe/se7_factory.json").read_text())
    for output in (text, case["output"][:cut] + text, f"{MARK}end\n{text}"):
        try:
            parse_probe(output)
        except FactError:
            pass


@given(st.text())
def test_root_garbage(text):
    try:
        parse_root(text)
    except FactError:
        pass


def test_probe_script_keeps_the_password_off_argv():
    script = probe_script(with_password=True)
    assert "sudo -S -p ''" in script and "<&3" in script and script.startswith("exec 3<&0 </dev/null")
    assert "sudo -n" in probe_script(with_password=False)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0.5.1-LTS", (0, 5, 1)),
        ("V24.04.01", (24, 4, 1)),
        ("v23.09 LTS-SP5", (23, 9)),
        ("", None),
        ("x1", None),
    ],
)
def test_version_tuple(text, expected):
    assert version_tuple(text) == expected


def test_gather_runs_one_probe_with_the_password_on_stdin():
    from provision.facts.parse import gather
    from tests.fakes import Reply, ScriptedTransport

    case = json.loads((Path(__file__).parent.parent / "facts/probe/se7_factory.json").read_text())
    fake = ScriptedTransport([Reply(r"^sh -c ", case["output"])], become_password="s3cr3t-Pw")
    facts = gather(fake)
    assert facts.heaps_now == Layout(3950, 2048, 3072) and facts.libsophon == "0.5.1"
    [(command, sudo, stdin)] = fake.calls
    assert stdin == "s3cr3t-Pw\n" and not sudo and "s3cr3t" not in command
    assert "sudo -S -p ''" in shlex.split(command)[2]


def test_gather_without_a_password_uses_sudo_n():
    from provision.facts.parse import gather
    from provision.inventory.hosts import Host
    from tests.fakes import Reply, ScriptedTransport

    fake = ScriptedTransport([Reply(r"sudo -n", "garbage without end marker")], host=Host("b", "b"))
    with pytest.raises(FactError, match="truncated"):
        gather(fake)
    assert fake.calls[0][2] is None


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "5.4.217-bm1684 #1 SMP Tue Nov 25 06:55:45 UTC 2025 aarch64\n",
            ("aarch64", "5.4.217-bm1684", "#1 SMP Tue Nov 25 06:55:45 UTC 2025"),
        ),
        ("aarch64\n5.4.217\n#1 SMP\n", ("aarch64", "5.4.217", "#1 SMP")),
        ("", (None, None, None)),
        ("garbage", (None, None, None)),
    ],
)
def test_parse_uname(text, expected):
    from provision.facts.parse import parse_uname

    assert parse_uname(text) == expected
