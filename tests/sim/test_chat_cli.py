"""`sophon-fleet chat HOST` on a simulated box: one-shot, JSON, a scripted REPL, cancel, exit, no orphans."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.sim.conftest import assert_nothing_left, connect, needs_root, run
from tests.sim.flows import invoke, pull_and_push, use_fleet

pytestmark = [pytest.mark.sim, needs_root]

SOPHON_FLEET = str(Path(sys.executable).with_name("sophon-fleet"))


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("user")


@pytest.fixture(autouse=True)
def as_fleet_user(fleet, user_dir, monkeypatch):
    """Each test runs as the user the module's fleet was set up for (the root conftest gives every test
    a fresh home and cache; this module's fleet was pulled and pushed with this one)."""
    use_fleet(fleet, user_dir, monkeypatch)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, user_dir):
    """One fleet for the module (deploying is the slow part): an int8-ready box with the int4 stand-in
    pushed and the runtime deployed, and a bare box."""
    from sim.fleet import Fleet

    fleet = Fleet.up(tmp_path_factory.mktemp("fleet"), ["se7-ready-int8", "se7-int4-only"], mirror=True)
    with pytest.MonkeyPatch.context() as monkeypatch:
        try:
            use_fleet(fleet, user_dir, monkeypatch)
            pull_and_push(fleet, "int4", names=["se7-1"])
            code, out, err = invoke("deploy", "-i", str(fleet.inventory_path), "--limit", "se7-1")
            assert code == 0, out + err
            yield fleet
        finally:
            assert fleet.down() == []
            assert_nothing_left(fleet)


@pytest.fixture
def slow_tpu(fleet):
    """Answers that take long enough to interrupt (100 ms per graph run), for one test."""
    fleet.fault("se7-1", "slow-tpu", "100")
    yield
    fleet.fault("se7-1", "slow-tpu", "0")


def chat_processes(fleet, name="se7-1"):
    with contextlib.closing(connect(fleet, name)) as client:
        _, out = run(client, "pgrep -f '[c]hat serve --stdio' || true")
    return out.split()


def wait_no_chat_process(fleet, timeout=15.0):
    deadline = time.monotonic() + timeout
    while chat_processes(fleet) and time.monotonic() < deadline:
        time.sleep(0.2)
    return chat_processes(fleet)


def test_one_shot_prompt_streams_an_answer(fleet):
    code, out, err = invoke(
        "chat", "se7-1", "-i", str(fleet.inventory_path), "--prompt", "你好", "--max-new-tokens", "12"
    )
    assert code == 0, err
    assert out.strip()
    assert "int4 loaded in" in err and "FTL:" in err and "TPS:" in err
    assert wait_no_chat_process(fleet) == []


def test_json_emits_the_protocol_events(fleet):
    code, out, _ = invoke(
        "chat",
        "se7-1",
        "-i",
        str(fleet.inventory_path),
        "--prompt",
        "hello",
        "--json",
        "--max-new-tokens",
        "5",
    )
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0]["event"] == "ready" and events[-1]["event"] == "done"
    assert {e["schema"] for e in events} == {"sophon-fleet/chat/v1"}  # JSON lines, each versioned
    assert {e["event"] for e in events[1:-1]} == {"token"}
    done, tokens = events[-1], events[1:-1]
    assert (done["stop"], done["tokens"]) in (("length", 5), *(("eos", n) for n in range(1, 5)))
    # a token event carries whole UTF-8 text: a token that ends mid-character waits for the next one
    assert 1 <= len(tokens) <= done["tokens"] and "".join(t["text"] for t in tokens)


def test_scripted_repl_with_reset_stats_and_exit(fleet):
    script = "hello box\n/stats\n/reset\nhello box\n/exit\n"
    code, out, err = invoke(
        "chat", "se7-1", "-i", str(fleet.inventory_path), "--max-new-tokens", "8", input=script
    )
    assert code == 0, err
    assert out.count("Answer: ") == 2
    stats = json.loads(out[out.index("{") : out.index("}") + 1])
    assert stats["answers"] == 1 and stats["turns"] == 1
    first, second = (part.split("\n")[0] for part in out.split("Answer: ")[1:])
    assert first == second  # greedy after /reset: the same answer to the same question
    assert wait_no_chat_process(fleet) == []


def test_repl_refuses_unknown_slash_commands_and_ends_its_line_on_exit(fleet):
    code, out, err = invoke(
        "chat",
        "se7-1",
        "-i",
        str(fleet.inventory_path),
        "--max-new-tokens",
        "4",
        input="/foo bar\n/stats\nexit\n",
    )
    assert code == 0, err
    assert out.count("Answer: ") == 0  # /foo never reached the model
    assert "unknown command '/foo'" in err and "/reset" in err
    assert json.loads(out[out.index("{") : out.rindex("}") + 1])["answers"] == 0
    assert out.endswith("Question: \n")  # the last prompt line is ended


def test_not_ready_box_says_what_is_missing(fleet):
    code, _, err = invoke("chat", "se7-2", "-i", str(fleet.inventory_path), "--prompt", "hi")
    assert code == 3
    assert "the chat runtime is not deployed" in err and "sophon-fleet deploy" in err


def spawn_chat(fleet, *args):
    return subprocess.Popen(
        [SOPHON_FLEET, "chat", "se7-1", "-i", str(fleet.inventory_path), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
        # as from a terminal: a run started in the background (`make test &`) inherits SIGINT ignored,
        # and Python then never raises KeyboardInterrupt for the Ctrl-C this test sends
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def read_until(stream, marker: bytes, timeout=30.0, min_bytes=0) -> bytes:
    os.set_blocking(stream.fileno(), False)
    seen, deadline = b"", time.monotonic() + timeout
    while marker not in seen or len(seen) < min_bytes:
        assert time.monotonic() < deadline, f"never saw {marker!r} in {seen[-300:]!r}"
        chunk = stream.read()
        seen += chunk or b""
        time.sleep(0.02)
    return seen


@contextlib.contextmanager
def answering(fleet, question: bytes):
    """A `sophon-fleet chat` process that has asked `question` and started its answer; killed and closed
    at the end, whatever happened."""
    proc = spawn_chat(fleet)
    try:
        read_until(proc.stdout, b"Question: ")
        proc.stdin.write(question + b"\n")
        proc.stdin.flush()
        read_until(proc.stdout, b"Answer: ")
        read_until(proc.stdout, b"", min_bytes=1)  # the first token is out
        yield proc
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()


def test_ctrl_c_cancels_the_answer_then_eof_exits_cleanly(fleet, slow_tpu):
    with answering(fleet, b"tell me a very long story about boxes") as proc:
        proc.send_signal(signal.SIGINT)
        err = read_until(proc.stderr, b"cancel)")
        assert b"tokens, cancel)" in err
        read_until(proc.stdout, b"Question: ")  # the session goes on
        proc.stdin.close()  # EOF
        assert proc.wait(timeout=20) == 0
    assert wait_no_chat_process(fleet) == []


def assert_still_answering(proc) -> None:
    """The answer has started and not ended: no FTL/TPS line yet (the REPL prints it after each answer)."""
    os.set_blocking(proc.stderr.fileno(), False)
    err = proc.stderr.read() or b""
    assert b"FTL:" not in err, err


def test_losing_the_connection_mid_answer_leaves_nothing_on_the_box(fleet, slow_tpu):
    with answering(fleet, b"tell me a very long story about boxes") as proc:
        assert chat_processes(fleet)
        assert_still_answering(proc)
        proc.kill()  # the controller dies mid-answer: its TCP connection goes with it
    assert wait_no_chat_process(fleet) == []


def test_bench_json_table_and_chart(fleet, tmp_path):
    chart = tmp_path / "bench.png"
    code, out, err = invoke(
        "bench",
        "-i",
        str(fleet.inventory_path),
        "--runs",
        "2",
        "--max-new-tokens",
        "8",
        "--json",
        "--chart",
        str(chart),
    )
    assert code == 3  # se7-2 has no runtime: reported, the other box is benchmarked
    hosts = {h["host"]: h for h in json.loads(out)["hosts"]}
    one = hosts["se7-1"]
    assert one["ok"] and one["variant"] == "int4" and len(one["runs"]) == 2
    assert one["published"] == {"ftl_s": 1.114, "tps": 7.489}
    assert one["ftl_s"]["min"] <= one["ftl_s"]["median"] <= one["ftl_s"]["max"]
    assert not hosts["se7-2"]["ok"] and "sophon-fleet deploy" in hosts["se7-2"]["hint"]
    assert chart.read_bytes()[:4] == b"\x89PNG"
    code, out, _ = invoke(
        "bench", "-i", str(fleet.inventory_path), "--limit", "se7-1", "--runs", "1", "--max-new-tokens", "4"
    )
    assert code == 0 and "published" in out and "1.114" in out and "7.489" in out
    assert wait_no_chat_process(fleet) == []


def test_box_going_down_mid_answer_is_a_clear_error(fleet, slow_tpu):
    with answering(fleet, b"tell me a very long story about boxes") as proc:
        assert_still_answering(proc)
        fleet.request("se7-1", "reboot")  # the box loses power mid-answer: every session drops
        assert proc.wait(timeout=30) == 4
        os.set_blocking(proc.stderr.fileno(), True)
        err = proc.stderr.read().decode()
        assert "connection to the chat runtime lost" in err and "FTL:" not in err
    fleet.wait_ready(timeout=30)
