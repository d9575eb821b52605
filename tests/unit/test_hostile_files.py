"""Hostile inventories, playbooks and manifests: exit 2 naming the file, in under a second.

Each case runs the real CLI in a child process with its address space capped at 1 GiB (an unbounded
expansion fails there instead of exhausting the machine) and a 20 s timeout. The child imports the command
first (`--help`), then measures the command's CPU time: that is the work a hostile file can cause, and unlike
wall time it does not depend on what else the (2-core, shared) test machine runs at that moment.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

BOMB = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""

CHILD = """\
import json, sys, time
from click.testing import CliRunner
from provision.cli.main import cli
CliRunner().invoke(cli, [sys.argv[1], "--help"])
started = time.process_time()
result = CliRunner().invoke(cli, sys.argv[1:])
print(json.dumps({"code": result.exit_code, "output": result.output, "seconds": time.process_time() - started,
                  "exception": repr(result.exception) if result.exit_code not in (0, 2) else None}))
"""


def run_cli(*args: str) -> dict:
    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        capture_output=True,
        text=True,
        timeout=20,
        preexec_fn=cap_memory,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def huge(path: Path) -> None:
    with path.open("w") as handle:
        handle.write("hosts:\n")
        for i in range(60_000):
            handle.write(f"  se7-{i}: {{address: 10.0.{i // 250}.{i % 250}}}\n")


CASES = {
    "alias-bomb.yml": lambda p: p.write_text(BOMB),
    "recursive.yml": lambda p: p.write_text("hosts: &a {x: *a}\n"),
    "deep.yml": lambda p: p.write_text(
        "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v\n"
    ),
    "binary.yml": lambda p: p.write_bytes(b"hosts:\n  se7-1: {address: \xff\xfe\x00\x01}\n"),
    "latin1.yml": lambda p: p.write_bytes(b"hosts:\n  se7-1: {address: caf\xe9}\n"),
    "huge.yml": huge,
    "bad-tag.yml": lambda p: p.write_text("hosts:\n  se7-1: {port: !!python/name:os.system ''}\n"),
    "range.ini": lambda p: p.write_text("[se7]\nse7-[01:99999999] ansible_user=linaro\n"),
    "nested-range.ini": lambda p: p.write_text("[se7]\nrack[1:200]-se7-[001:100]\n"),
}


YAML_CASES = sorted(n for n in CASES if n.endswith(".yml"))


def check_refused(result: dict, path: Path) -> None:
    assert result["code"] == 2, result
    assert str(path) in result["output"]
    assert "Traceback" not in result["output"]
    assert result["seconds"] < 1.0, result


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_hostile_inventory_is_exit_2_naming_it_in_under_a_second(tmp_path, name):
    path = tmp_path / name
    CASES[name](path)
    check_refused(run_cli("inventory", "-i", str(path)), path)


@pytest.mark.parametrize("name", YAML_CASES)
def test_a_hostile_playbook_is_exit_2_naming_it_in_under_a_second(tmp_path, name):
    path = tmp_path / name
    CASES[name](path)
    check_refused(run_cli("play", str(path), "-H", "127.0.0.1", "--dry-run"), path)


@pytest.mark.parametrize("name", YAML_CASES)
def test_a_hostile_manifest_is_exit_2_naming_it_in_under_a_second(tmp_path, name):
    path = tmp_path / name
    CASES[name](path)
    check_refused(run_cli("assets", "verify", "-m", str(path)), path)


def test_a_range_at_the_limit_is_still_accepted(tmp_path):
    path = tmp_path / "fleet.ini"
    path.write_text("[se7]\nse7-[0001:2000] ansible_user=linaro\n")
    result = run_cli("inventory", "-i", str(path), "--json")
    assert result["code"] == 0, result
    assert result["output"].count('"se7-') >= 2000


HOSTILE_VALUES = [
    ("user", "linaro$(touch /tmp/owned)"),
    ("user", "linaro\nProxyCommand touch /tmp/owned"),
    ("user", "lin\x1b]0;owned\x07aro"),
    ("address", "10.9.9.9;touch /tmp/owned"),
    ("address", "10.9.9.9 -oProxyCommand=x"),
    ("address", "-oProxyCommand=touch"),
    ("proxy_jump", "jump;touch /tmp/owned"),
]


@pytest.mark.parametrize(("key", "value"), HOSTILE_VALUES)
@pytest.mark.parametrize("kind", ["own.yml", "ansible.ini"])
def test_shell_metacharacters_in_connection_values_are_refused(tmp_path, kind, key, value):
    """Nothing ran with them, but they are invalid input: exit 2, file and line named."""
    path = tmp_path / kind
    if kind == "own.yml":
        path.write_text("hosts:\n  se7-1:\n    address: 10.0.0.1\n" + f"    {key}: {json.dumps(value)}\n")
        line = 4
    else:
        ansible = {"user": "ansible_user", "address": "ansible_host", "proxy_jump": "proxy_jump"}[key]
        path.write_text(f"[se7]\nse7-1 {ansible}={json.dumps(value)}\n")
        line = 2
    result = run_cli("inventory", "-i", str(path))
    assert result["code"] == 2, result
    assert f"{path}:{line}" in result["output"] and key in result["output"]
    assert "\x1b" not in result["output"] and "\x07" not in result["output"]


def test_a_hostile_user_on_the_command_line_is_refused():
    result = run_cli("inventory", "-H", "linaro$(id)@10.0.0.1")
    assert result["code"] == 2, result
