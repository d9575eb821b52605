"""The fleet behind one HAProxy endpoint (`gateway up`), 3 simulated boxes serving: the official `openai`
client and curl through the gateway, 6 concurrent streams (never two on one box, all three used), a box
killed mid-stream, a client leaving mid-stream, and `gateway reload` with streams running."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import openai
import pytest

from tests.sim.conftest import needs_root
from tests.sim.flows import invoke, pull_and_push, use_fleet

pytestmark = [pytest.mark.sim, needs_root]

MODEL = "glm4-9b-sim"
TPU_MS = 10  # per graph run: a token takes a few, so streams overlap and timing is observable
BOXES = ["se7-1", "se7-2", "se7-3"]
# a stream cut mid-body surfaces as the HTTP library's error (openai's own transport, not httpx in 3.x)
STREAM_ERRORS = (openai.APIError, openai._base_client.httpx2.HTTPError)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def box_url(fleet, name: str) -> str:
    return f"http://{fleet.state.box(name).address}:8000"


def box_health(fleet, name: str) -> dict:
    try:
        with urllib.request.urlopen(box_url(fleet, name) + "/health", timeout=2) as response:
            return json.loads(response.read())
    except OSError as error:
        return {"ready": False, "error": str(error)}


def box_metric(fleet, name: str, sample: str) -> float:
    with urllib.request.urlopen(box_url(fleet, name) + "/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
    return 0.0


def served(fleet, name: str) -> float:
    return box_metric(fleet, name, 'sophon_chat_requests_total{status="200"}')


def wait_until(check, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached in {timeout} s"
        time.sleep(0.05)


class Gateway:
    """`sophon-fleet gateway up` as a process group of its own (the CLI and its haproxy)."""

    def __init__(self, fleet, port: int) -> None:
        self.fleet, self.port = fleet, port
        code = "from provision.cli.main import main; main()"
        cmd = [sys.executable, "-c", code, "gateway", "up", "-i", str(fleet.inventory_path)]
        self.proc = subprocess.Popen(
            [*cmd, "--listen", f"127.0.0.1:{port}"], start_new_session=True, stderr=subprocess.PIPE
        )
        self.url = f"http://127.0.0.1:{port}"
        self._client: openai.OpenAI | None = None
        code, out, _ = invoke("gateway", "key")
        assert code == 0
        self.key = out.strip()
        wait_until(self._answers, 30, "the gateway answering")

    def _answers(self) -> bool:
        assert self.proc.poll() is None, self.proc.stderr.read().decode()
        try:
            return bool(self.client().models.list().data)
        except openai.APIError:
            return False

    def client(self) -> openai.OpenAI:
        """One client for the whole test (thread-safe; closed with the gateway)."""
        if self._client is None:
            self._client = openai.OpenAI(
                base_url=self.url + "/v1", api_key=self.key, max_retries=0, timeout=60
            )
        return self._client

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=20)
        self.proc.stderr.close()


@pytest.fixture
def gateway(sim_fleet, tmp_path, monkeypatch):
    fleet = sim_fleet(["se7-ready-int8"] * 3, mirror=True)
    use_fleet(fleet, tmp_path, monkeypatch)
    pull_and_push(fleet, "int4")
    for command in (["deploy"], ["serve", "up"]):
        code, out, err = invoke(*command, "-i", str(fleet.inventory_path))
        assert code == 0, out + err
    for name in BOXES:
        fleet.fault(name, "slow-tpu", str(TPU_MS))
    gw = Gateway(fleet, free_port())
    try:
        yield fleet, gw
    finally:
        gw.stop()


def ask(gw: Gateway, max_tokens: int = 8, stream: bool = True) -> str:
    messages = [{"role": "user", "content": "你好"}]
    if not stream:
        answer = gw.client().chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens)
        return answer.choices[0].finish_reason
    chunks = list(
        gw.client().chat.completions.create(
            model=MODEL, messages=messages, max_tokens=max_tokens, stream=True
        )
    )
    return chunks[-1].choices[0].finish_reason


def test_clients_talk_to_the_gateway_as_to_one_box(gateway):
    fleet, gw = gateway
    assert [m.id for m in gw.client().models.list()] == [MODEL]
    assert ask(gw, stream=False) == "length" and ask(gw) == "length"
    wrong = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-wrong", max_retries=0)
    with wrong, pytest.raises(openai.AuthenticationError) as caught:
        wrong.models.list()
    assert caught.value.code == "invalid_api_key"
    curl = shutil.which("curl")
    assert curl, "curl is needed (make setup installs it)"
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    )
    out = subprocess.run(
        [curl, "-sSN", "-H", f"Authorization: Bearer {gw.key}", "-d", body, gw.url + "/v1/chat/completions"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.rstrip().endswith("data: [DONE]")


def test_six_concurrent_streams_use_all_three_boxes_never_two_on_one(gateway):
    fleet, gw = gateway
    before = {name: served(fleet, name) for name in BOXES}
    results, errors, busiest = [], [], []

    def one():
        try:
            results.append(ask(gw, max_tokens=24))
        except STREAM_ERRORS as error:
            errors.append(error)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        healths = [box_health(fleet, name) for name in BOXES]
        busiest.append(max(h.get("queue_depth", 0) + int(bool(h.get("busy"))) for h in healths))
    for thread in threads:
        thread.join()
    assert not errors and results == ["length"] * 6
    assert max(busiest) == 1  # a box never had a second request, running or queued
    used = {name: served(fleet, name) - before[name] for name in BOXES}
    assert sum(used.values()) == 6 and all(n >= 1 for n in used.values()), used


def start_stream(gw: Gateway, max_tokens: int):
    stream = gw.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "你好"}], max_tokens=max_tokens, stream=True
    )
    chunks = iter(stream)
    next(chunks)  # the role chunk: the answer has started on some box
    return stream, chunks


def busy_box(fleet) -> str:
    return wait_until(
        lambda: next((n for n in BOXES if box_health(fleet, n).get("busy")), None), 10, "a busy box"
    )


def test_a_box_killed_mid_stream_ends_that_stream_and_rejoins_later(gateway):
    fleet, gw = gateway
    stream, chunks = start_stream(gw, 110)
    victim = busy_box(fleet)
    fleet.power_off(victim)
    with pytest.raises(STREAM_ERRORS):
        for _ in chunks:
            pass
    stream.close()
    for _ in range(4):  # the healthy boxes answer
        assert ask(gw, max_tokens=3) == "length"
    fleet.power_on(victim)
    fleet.wait_ready(names=[victim])
    wait_until(lambda: box_health(fleet, victim).get("ready"), 60, f"{victim} serving again")

    def victim_used() -> bool:
        threads = [threading.Thread(target=ask, args=(gw, 3)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return served(fleet, victim) > 0  # its counters started again at boot

    wait_until(victim_used, 30, f"the gateway sending requests to {victim} again")


def test_a_client_leaving_mid_stream_frees_its_box(gateway):
    fleet, gw = gateway
    stream, chunks = start_stream(gw, 110)  # SEQLEN 128
    box = busy_box(fleet)
    next(chunks)
    gone = box_metric(fleet, box, 'sophon_chat_requests_total{status="499"}')
    stream.close()
    wait_until(lambda: not box_health(fleet, box).get("busy"), 5, f"{box} free again")
    assert box_metric(fleet, box, 'sophon_chat_requests_total{status="499"}') == gone + 1
    assert box_metric(fleet, box, "sophon_chat_completion_tokens_total") < 50


def test_reload_applies_an_inventory_change_without_dropping_streams(gateway):
    fleet, gw = gateway
    stream, chunks = start_stream(gw, 100)
    streaming_on = busy_box(fleet)
    keep = [streaming_on, next(n for n in BOXES if n != streaming_on)]
    dropped = next(n for n in BOXES if n not in keep)
    code, out, err = invoke("gateway", "reload", "-i", str(fleet.inventory_path), "--limit", ",".join(keep))
    assert code == 0, out + err
    assert box_health(fleet, streaming_on)["busy"]  # the reload happened while the answer streamed
    rest = list(chunks)
    assert rest[-1].choices[0].finish_reason in ("stop", "length")  # it ended normally, on the old worker
    before = served(fleet, dropped)
    for _ in range(4):
        assert ask(gw, max_tokens=3) == "length"
    assert served(fleet, dropped) == before
