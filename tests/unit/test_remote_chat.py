"""The remote chat client against the real runtime (`python -m chat serve --stdio`) over local pipes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from provision.errors import ConnectError, RemoteError
from provision.runtime.remote_chat import ChatClient, Done, Token, answer_text
from sim.tinyglm import build_standin

SAIL_EMULATOR = Path(__file__).resolve().parents[2] / "sim" / "sail"


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    return build_standin(tmp_path_factory.mktemp("standin"), seed=3, variant="int4")


@pytest.fixture
def server(standin, request):
    command = [sys.executable, "-m", "chat", "serve", "--stdio"]
    command += ["--bmodel", str(standin.bmodel), "--token", str(standin.token_dir)]
    env = {**os.environ, "PYTHONPATH": str(SAIL_EMULATOR)}  # `import sophon.sail` as on a box
    env["SOPHON_SIM_TPU_DELAY_MS"] = str(getattr(request, "param", 0))
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    yield proc
    proc.kill()
    proc.wait()
    proc.stdin.close()
    proc.stdout.close()


def client_of(proc):
    return ChatClient(proc.stdin, proc.stdout, name="local", timeout=60)


def test_ready_then_a_streamed_answer(server, standin):
    client = client_of(server)
    ready = client.wait_ready()
    assert ready.seqlen == standin.seqlen and ready.load_s >= 0
    events = list(client.chat("hello box", max_new_tokens=8))
    assert all(isinstance(e, Token) for e in events[:-1])
    done = events[-1]
    assert isinstance(done, Done) and done.tokens >= 1 and done.stop in ("eos", "length")
    assert done.tokens <= 8


def test_same_prompt_after_reset_gives_the_same_greedy_answer(server):
    client = client_of(server)
    client.wait_ready()
    first, _ = answer_text(client.chat("the tiny model", max_new_tokens=6))
    client.reset()
    again, _ = answer_text(client.chat("the tiny model", max_new_tokens=6))
    assert first == again
    assert client.stats()["answers"] == 2


@pytest.mark.parametrize("server", [30], indirect=True)  # 30 ms per graph: time to cancel mid-answer
def test_cancel_stops_the_running_answer(server):
    client = client_of(server)
    client.wait_ready()
    events = client.chat("tell me everything", max_new_tokens=10_000)
    client.cancel()  # arrives while the prompt is being processed: the answer stops at the next token
    done = [e for e in events if isinstance(e, Done)][0]
    assert done.stop == "cancel" and done.tokens <= 1


def test_runtime_errors_are_typed(server, standin):
    client = client_of(server)
    client.wait_ready()
    with pytest.raises(RemoteError, match="too_long"):
        answer_text(client.chat("word " * (standin.seqlen * 4)))


@pytest.mark.parametrize("server", [150], indirect=True)  # 150 ms a graph run: the answer is still going
def test_connection_loss_mid_answer_is_a_connect_error(server):
    client = client_of(server)
    client.wait_ready()
    events = client.chat("keep talking", max_new_tokens=10_000)
    assert isinstance(next(events), Token)
    server.kill()
    seen = []
    with pytest.raises(ConnectError, match="connection to the chat runtime lost"):
        for event in events:
            seen.append(event)
    assert not any(isinstance(e, Done) for e in seen)  # the runtime died mid-answer, not after it


def test_quit_ends_the_runtime(server):
    client = client_of(server)
    client.wait_ready()
    client.quit()
    assert server.wait(timeout=10) == 0
