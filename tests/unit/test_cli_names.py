"""Host names and --limit terms that name nothing are errors that say so, with a guess."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from provision.cli.main import cli

INVENTORY = """\
groups:
  lab: {hosts: [se7-1, se7-2]}
hosts:
  se7-1: {address: 127.0.0.1, port: 9}
  se7-2: {address: 127.0.0.1, port: 9}
  sm7-1: {address: 127.0.0.1, port: 9}
"""


@pytest.fixture
def inv(tmp_path):
    path = tmp_path / "fleet.yml"
    path.write_text(INVENTORY)
    return str(path)


def invoke(*args):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("command", [["chat", "se7-9"], ["doctor", "se7-9"], ["memory", "rollback", "se7-9"]])
def test_a_mistyped_host_is_named_with_the_inventory_and_a_guess(inv, command):
    code, out, err = invoke(*command, "-i", inv, "--connect-timeout", "1")
    assert code == 2 and out == ""
    assert f"no host se7-9 in {inv} (did you mean se7-1 or se7-2?)" in err
    assert "--limit" not in err  # no --limit was given


def test_a_limit_term_matching_nothing_is_an_error_not_dropped(inv):
    code, out, err = invoke("inventory", "-i", inv, "-l", "se7-1,se7-9")
    assert code == 2 and out == ""
    assert "--limit: no host or group se7-9" in err and "did you mean se7-1" in err
    code, _, err = invoke("inventory", "-i", inv, "-l", "lab,!lbb")
    assert code == 2 and "no host or group lbb" in err and "did you mean lab?" in err
    code, _, err = invoke("inventory", "-i", inv, "-l", "xx*")
    assert code == 2 and "no host or group xx*" in err
    code, out, _ = invoke("inventory", "-i", inv, "-l", "se7-*,!se7-2", "--json")
    assert code == 0 and [h["name"] for h in json.loads(out)["hosts"]] == ["se7-1"]


def test_a_name_that_does_not_resolve_is_called_a_dns_failure(monkeypatch):
    # no inventory: the name is taken as an address; `.invalid` never resolves (RFC 6761)
    code, out, err = invoke("doctor", "se7-9.invalid", "--connect-timeout", "1")
    assert code == 4
    assert "cannot resolve the name 'se7-9.invalid' (DNS" in err and "Unknown error" not in err
    code, out, err = invoke("chat", "se7-9", "--connect-timeout", "1", "--prompt", "hi")
    assert code == 4 and "cannot resolve the name 'se7-9'" in err


def test_a_mistyped_command_gets_a_suggestion():
    code, out, err = invoke("preflite")
    assert code == 2 and "No such command 'preflite'. Did you mean preflight?" in err


@pytest.fixture
def hang_up_port():
    """A TCP port that accepts connections and hangs up before any SSH banner (paramiko's transport thread
    logs "Error reading SSH protocol banner" with a traceback for each)."""
    import socket
    import struct
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn = server.accept()[0]
            except OSError:
                continue
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
            stop.wait(0.1)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_no_library_traceback_below_vv(hang_up_port):
    # paramiko logs "Error reading SSH protocol banner" with a traceback for a box that never answers
    target = f"127.0.0.1:{hang_up_port}"
    code, out, err = invoke("preflight", "-H", target, "--connect-timeout", "1", "--json")
    assert code == 4 and "Traceback" not in err and "paramiko" not in err
    assert len(err.splitlines()) <= 2, err
    code, _, err = invoke("-vv", "preflight", "-H", target, "--connect-timeout", "1")
    assert code == 4 and "paramiko.transport" in err and "Traceback" in err  # the library's detail, at -vv
