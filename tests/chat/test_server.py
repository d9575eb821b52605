"""The JSON-lines server: protocol validation, event order, cancel honoured between tokens, and the CLI."""

import json
import os
import queue
import subprocess
import sys
import threading
import time

import pytest

from chat import protocol
from chat.errors import ProtocolError
from chat.generate import ChatSession
from chat.model import GlmModel
from chat.server import StdioServer
from tests.chat.conftest import ROOT, subprocess_env


class SlowModel(GlmModel):
    """The stand-in at a box-like 20 ms per token, so a cancel can arrive mid-answer."""

    def decode(self, token):
        time.sleep(0.02)
        super().decode(token)


class EventSink:
    """A binary stdout that hands each written line to the test as a dict."""

    def __init__(self):
        self.events = queue.Queue()

    def write(self, data):
        for line in data.decode().splitlines():
            self.events.put(json.loads(line))

    def flush(self):
        pass

    def next(self, timeout=10.0):
        return self.events.get(timeout=timeout)

    def until(self, name):
        seen = []
        while not seen or seen[-1]["event"] != name:
            seen.append(self.next())
        return seen


@pytest.fixture
def server(standin, tokenizer):
    read_fd, write_fd = os.pipe()
    stdin, requests = os.fdopen(read_fd, "rb"), os.fdopen(write_fd, "wb", buffering=0)
    sink = EventSink()
    session = ChatSession(SlowModel(str(standin.bmodel)), tokenizer)
    serve = StdioServer(session, "stand-in.bmodel", 0.25, stdin, sink)
    thread = threading.Thread(target=serve.serve, daemon=True)
    thread.start()

    def send(request):
        requests.write((request if isinstance(request, str) else json.dumps(request)).encode() + b"\n")

    yield send, sink
    requests.close()
    thread.join(timeout=10)
    assert not thread.is_alive()
    stdin.close()


def test_ready_tokens_done_stats_reset(server, standin):
    send, sink = server
    assert sink.next() == {
        "event": "ready",
        "model": "stand-in.bmodel",
        "seqlen": standin.seqlen,
        "load_s": 0.25,
    }
    send({"op": "chat", "id": "a1", "prompt": "tell me about the box", "max_new_tokens": 5})
    events = sink.until("done")
    done = events[-1]
    assert {e["event"] for e in events[:-1]} <= {"token"} and all(e["id"] == "a1" for e in events)
    assert done["tokens"] == 5 and done["stop"] == "length" and done["ftl_s"] >= 0 and done["tps"] > 0
    send({"op": "stats"})
    stats = sink.next()
    assert (
        stats["event"] == "stats" and stats["answers"] == 1 and stats["tokens"] == 5 and stats["turns"] == 1
    )
    send({"op": "reset"})
    assert sink.next() == {"event": "reset"}
    send({"op": "stats"})
    assert sink.next()["turns"] == 0


def test_cancel_stops_the_running_answer_between_tokens(server):
    send, sink = server
    sink.next()
    send({"op": "chat", "id": 7, "prompt": "hello", "max_new_tokens": 100})
    first = sink.next()
    while first["event"] != "token":
        first = sink.next()
    send({"op": "cancel", "id": 7})
    done = sink.until("done")[-1]
    assert done["id"] == 7 and done["stop"] == "cancel" and 0 < done["tokens"] < 100


def test_a_queued_chat_can_be_cancelled_before_it_starts(server):
    send, sink = server
    sink.next()
    send({"op": "chat", "id": "long", "prompt": "hello", "max_new_tokens": 30})
    send({"op": "chat", "id": "queued", "prompt": "hello", "max_new_tokens": 30})
    send({"op": "cancel", "id": "queued"})
    assert sink.until("done")[-1]["id"] == "long"
    assert sink.until("done")[-1] == {
        "event": "done",
        "id": "queued",
        "tokens": 0,
        "ftl_s": 0.0,
        "tps": 0.0,
        "stop": "cancel",
    }


def test_bad_requests_get_errors_and_the_server_goes_on(server, standin):
    send, sink = server
    sink.next()
    send("not json")
    assert sink.next()["code"] == "bad_request"
    send({"op": "chat", "prompt": "no id"})
    assert "needs an id" in sink.next()["message"]
    send({"op": "chat", "id": 1, "prompt": "box " * standin.seqlen})
    assert sink.next() == {
        "event": "error",
        "id": 1,
        "code": "too_long",
        "message": sink_message_too_long(standin.seqlen),
    }
    send({"op": "chat", "id": 2, "prompt": "ok", "max_new_tokens": 1})
    assert sink.until("done")[-1]["tokens"] == 1


def sink_message_too_long(seqlen):
    reserve = seqlen // 4
    fit = seqlen - reserve - 2
    return (
        f"the message is {seqlen + 4} tokens; at most {fit} fit "
        f"(SEQLEN {seqlen} minus {reserve} reserved for the answer)"
    )


@pytest.mark.parametrize(
    ("request_line", "message"),
    [
        ('{"op": "chat", "id": 1, "prompt": 3}', "prompt"),
        ('{"op": "chat", "id": true, "prompt": "x"}', "id"),
        ('{"op": "chat", "id": 1, "prompt": "x", "max_new_tokens": 0}', "max_new_tokens"),
        ('{"op": "chat", "id": 1, "prompt": "x", "sampling": {"top_p": 1.5}}', "sampling.top_p"),
        ('{"op": "chat", "id": 1, "prompt": "x", "sampling": {"top_k": 5}}', "unknown sampling field"),
        ('{"op": "cancel"}', "cancel needs an id"),
        ('{"op": "shutdown"}', "unknown op"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_protocol_rejects_invalid_requests(request_line, message):
    with pytest.raises(ProtocolError, match=message):
        protocol.parse_request(request_line)


def test_events_are_utf8_json_lines_whatever_the_locale():
    line = protocol.encode(protocol.token_event("x", "你好😀"))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line.decode("utf-8")) == {"event": "token", "id": "x", "text": "你好😀"}
    with pytest.raises(ValueError):
        protocol.done_event("x", 1, 0.1, 1.0, "stopped")


def test_serve_stdio_end_to_end_in_a_subprocess(standin):
    requests = "\n".join(
        [
            json.dumps({"op": "chat", "id": 1, "prompt": "你好", "max_new_tokens": 4}),
            json.dumps(
                {"op": "chat", "id": 2, "prompt": "again", "sampling": {"seed": 1}, "max_new_tokens": 3}
            ),
            json.dumps({"op": "quit"}),
        ]
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chat",
            "serve",
            "--stdio",
            "--bmodel",
            str(standin.bmodel),
            "--token",
            str(standin.token_dir),
        ],
        input=requests.encode(),
        capture_output=True,
        env=dict(subprocess_env(), LANG="C", LC_ALL="C"),
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()
    events = [json.loads(line) for line in result.stdout.decode("utf-8").splitlines()]
    assert events[0]["event"] == "ready"
    done = [e for e in events if e["event"] == "done"]
    assert [(d["id"], d["tokens"], d["stop"]) for d in done] == [(1, 4, "length"), (2, 3, "length")]
