"""Issue 14's everyday commands that need no box: --version, completion, the config file and config show."""

from __future__ import annotations

import json
import platform
from importlib.metadata import version

import pytest
from click.testing import CliRunner

from provision import __version__
from provision.cli.main import cli

INVENTORY = """\
groups:
  lab: {hosts: [se7-1, se7-2]}
hosts:
  se7-1: {address: 127.0.0.1, port: 9}
  se7-2: {address: 127.0.0.1, port: 9}
  sm7-1: {address: 127.0.0.1, port: 9}
"""


def invoke(*args, env=None):
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def inv(tmp_path):
    path = tmp_path / "fleet.yml"
    path.write_text(INVENTORY)
    return str(path)


def test_version_names_the_tool_python_paramiko_and_the_runtime():
    code, out, _ = invoke("--version")
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert code == 0 and lines["sophon-fleet"] == __version__
    assert lines["python"].startswith(platform.python_version())
    assert lines["paramiko"] == version("paramiko")
    assert lines["runtime"].startswith(f"{__version__}+app.") and len(lines["runtime"].split(".")[-1]) == 16


def complete(words, env=None):
    line = " ".join(words)
    cword = len(words) - 1
    env = {
        "_SOPHON_FLEET_COMPLETE": "bash_complete",
        "COMP_WORDS": line,
        "COMP_CWORD": str(cword),
        **(env or {}),
    }
    result = CliRunner().invoke(cli, [], env=env, prog_name="sophon-fleet")
    return [item.split(",", 1)[1] for item in result.output.split()]


def test_completion_scripts_and_host_and_group_names(inv):
    for shell in ("bash", "zsh", "fish"):
        code, out, _ = invoke("completion", shell)
        assert code == 0 and "_SOPHON_FLEET_COMPLETE" in out
    assert complete(["sophon-fleet", "pref"]) == ["preflight"]
    assert complete(["sophon-fleet", "preflight", "-i", inv, "-l", "se7"]) == ["se7-1", "se7-2"]
    assert complete(["sophon-fleet", "preflight", "-i", inv, "-l", "se7-1,l"]) == ["se7-1,lab"]
    assert complete(["sophon-fleet", "chat", "-i", inv, "s"]) == ["se7-1", "se7-2", "sm7-1"]
    assert complete(["sophon-fleet", "chat", "-i", "/nonexistent.yml", "s"]) == []  # never an error


def test_config_file_defaults_environment_overrides_config_show(
    tmp_path, inv, isolated_settings, monkeypatch
):
    monkeypatch.delenv("SOPHON_FLEET_CACHE")  # the config file's cache (a temp dir) is the one in force
    home = isolated_settings / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yml").write_text(
        f"inventory: {inv}\nforks: 4\ncache: {tmp_path / 'cfg-cache'}\nmodel: m1\n"
    )
    code, out, _ = invoke("config", "show", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["schema"] == "sophon-fleet/config-show/v1"
    assert doc["values"]["inventory"] == [inv] and doc["origins"]["inventory"] == f"{home / 'config.yml'}:1"
    assert doc["values"]["forks"] == 4 and doc["values"]["cache"] == str(tmp_path / "cfg-cache")
    # the environment wins over the file
    code, out, _ = invoke("config", "show", "--json", env={"SOPHON_FLEET_CACHE": str(tmp_path / "env")})
    doc = json.loads(out)
    assert (
        doc["values"]["cache"] == str(tmp_path / "env")
        and doc["origins"]["cache"] == "env SOPHON_FLEET_CACHE"
    )
    # the config's inventory is used when no -i is given
    code, out, _ = invoke("inventory", "--json")
    assert code == 0 and [h["name"] for h in json.loads(out)["hosts"]] == ["se7-1", "se7-2", "sm7-1"]
    # a bad config file: exit 2, file, line and key
    (home / "config.yml").write_text("forks: 4\nforkz: 3\n")
    code, _, err = invoke("config", "show")
    assert code == 2 and f"{home / 'config.yml'}:2: forkz: unknown setting" in err
    (home / "config.yml").write_text("forks: lots\n")
    code, _, err = invoke("inventory", "-i", inv)
    assert code == 2 and "config.yml:1: forks: must be a whole number" in err
