"""Values a user copies are never cut, pipes get plain rows, and nothing from a box or a file reaches the
terminal raw."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from provision.cli.main import cli
from tests.sim.conftest import connect, needs_root, sudo

pytestmark = [pytest.mark.sim, needs_root]

HOSTILE = "se7\x1b]0;owned\x07\x1b[2J"
BOX_DRAWING = set("┏┓┗┛━┃│─┡┩╇╈┼")


def invoke(*args, env=None):
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def assert_no_raw_control(text):
    raw = [c for c in text if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0]
    assert not raw, f"raw control characters reached the terminal: {raw!r}"


def test_a_hostile_hostname_and_inventory_are_escaped_everywhere(sim_fleet, tmp_path):
    fleet = sim_fleet(["se7-factory"])
    set_name = "sh -c \"printf 'se7\\033]0;owned\\007\\033[2J' > /proc/sys/kernel/hostname\""
    code, said = sudo(connect(fleet, "se7-1"), set_name)
    assert code == 0, said
    inv = str(fleet.inventory_path)
    code, out, err = invoke("doctor", "se7-1", "-i", inv)
    assert code == 0, err
    assert_no_raw_control(out + err)
    assert "hostname:     se7\\x1b]0;owned\\x07\\x1b[2J" in out  # visible, escaped, whole
    # --json keeps the real value (JSON escapes it), for machines
    code, out, _ = invoke("doctor", "se7-1", "-i", inv, "--json")
    assert json.loads(out)["facts"]["hostname"] == HOSTILE and "\x1b" not in out

    # escape sequences from the inventory (a user, a group name; refused or shown, never raw) and in an
    # error that quotes the command line
    data = yaml.safe_load(fleet.inventory_path.read_text())
    data["hosts"]["se7-1"]["user"] = "lin\x1b[2Jaro"
    data["groups"]["lab\x1b[2J"] = {"hosts": ["se7-1"]}
    hostile = tmp_path / "hostile.yml"
    hostile.write_text(yaml.safe_dump(data))
    for args in (["inventory", "-i", str(hostile)], ["inventory", "-i", str(hostile), "-l", "x\x1b[2J"]):
        code, out, err = invoke(*args)
        assert_no_raw_control(out + err)
        assert "\\x1b[2J" in out + err


def test_pipes_get_plain_rows_and_80_columns_never_cut_a_value(sim_fleet):
    fleet = sim_fleet(["se7-factory", "se7-small"])
    inv = str(fleet.inventory_path)
    key = str(fleet.state.dir / "operator_key")
    target = f"linaro@{fleet.state.box('se7-1').address}:22"
    # stdout is not a terminal (CliRunner): plain rows, nothing cut, no box drawing
    code, out, _ = invoke("inventory", "-i", inv)
    assert code == 0 and not BOX_DRAWING & set(out) and "…" not in out
    header, first, second = out.splitlines()
    assert header.split() == ["host", "target", "groups", "variant", "auth", "sudo", "jump", "from"]
    assert first.split()[:2] == ["se7-1", target] and f"key:{key}" in first
    # a terminal 80 columns wide: still every address, key path and layout whole, on one line
    terminal = {"FORCE_COLOR": "1", "TTY_COMPATIBLE": "1", "COLUMNS": "80", "TERM": "xterm"}
    for command in (["inventory", "-i", inv], ["memory", "plan", "-i", inv], ["preflight", "-i", inv]):
        code, out, _ = invoke(*command, env=terminal)
        plain = _strip_sgr(out)
        assert "…" not in plain, plain
        if command[0] == "inventory":
            assert any(target in line and f"key:{key}" in line for line in plain.splitlines()), plain
        else:
            assert any("3950/2048/3072" in line for line in plain.splitlines()), plain
            assert any("7615/3071/3071" in line for line in plain.splitlines()), plain


def test_play_prints_its_steps_as_results_on_stdout(sim_fleet, tmp_path):
    fleet = sim_fleet(["se7-ready-int8"])
    book = tmp_path / "check.yml"
    book.write_text("name: check\nmodel: glm4-9b\nsteps:\n  - preflight: {}\n")
    code, out, err = invoke("play", str(book), "-i", str(fleet.inventory_path))
    assert "step preflight: 1 box" in out and "se7-1:" in out and "PLAY RECAP" in out
    assert "step preflight" not in err


def _strip_sgr(text):
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)
