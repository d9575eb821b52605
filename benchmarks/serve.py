"""Serving overhead and fleet scaling, side by side in one run, on a simulated fleet of 3 boxes.

For each TPU speed (the emulator's natural speed, and `sim fault BOX slow-tpu MS` set so a token takes about
130 ms, the real int4 rate), on box se7-1 with the same model and prompt:
- stdio:   `python -m chat serve --stdio` over SSH (the controller's ChatClient), the baseline;
- http:    the box's sophon-chat.service, POST /v1/chat/completions with stream=true, on one kept-alive
           connection (as the `openai` client's pool does, and as stdio keeps its session);
- http-new: the same, a new TCP connection for every answer;
- gateway: the same request through `sophon-fleet gateway up` (HAProxy) limited to se7-1;
FTL (send → first token, at the client) and TPS (tokens after the first / time after the first): medians,
and the median of the round-by-round ratios to stdio (the modes take turns answer by answer).
Then 12 concurrent clients through the gateway over all 3 boxes: aggregate tokens/s against one box's
(the same requests one after another on se7-1). Targets: http ≥ 0.97x stdio, gateway ≥ 0.95x, 3 boxes ≥ 2.7x.

Run as root:  .venv/bin/python benchmarks/serve.py [--runs 15] [--tokens 48]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from provision.cli.main import cli
from provision.inventory.hosts import load_inventory
from provision.manifest import load_manifest
from provision.runtime.remote_chat import Token, runtime_session
from provision.ssh.transport import Connector, Trust
from sim.fleet import Fleet
from sim.mirror import SIM_MODEL

PROMPT = "你好"
GRAPHS_PER_TOKEN = 5  # embedding_cache, 2 blocks, lm_head, greedy_head of the stand-in
REAL_TOKEN_MS = 130


def sophon_fleet(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(f"`sophon-fleet {' '.join(args)}` failed: {result.stdout}{result.stderr}")
    return result.stdout


def timed_stream(tokens: Callable[[], object]) -> tuple[float, float, int]:
    """(FTL, TPS, tokens) of one streamed answer; `tokens()` iterates one event per token."""
    started = time.perf_counter()
    stamps = [time.perf_counter() for _ in tokens()]
    if len(stamps) < 2:
        raise SystemExit("an answer had fewer than 2 tokens; raise --tokens")
    return stamps[0] - started, (len(stamps) - 1) / (stamps[-1] - stamps[0]), len(stamps)


def http_tokens(address: str, port: int, key: str, max_tokens: int, keep_alive: bool = True):
    """The content chunks of one streamed chat completion (http.client, no client library overhead). Like
    the `openai` client (httpx's pool), answers reuse one kept-alive connection, as the stdio baseline reuses
    its session; `keep_alive=False` opens a connection per answer."""
    connections: list[http.client.HTTPConnection] = []

    def events():
        if not connections:
            connections.append(http.client.HTTPConnection(address, port, timeout=120))
        conn = connections[0]
        body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": PROMPT}]}
        body.update(max_tokens=max_tokens, stream=True)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        finished = False
        try:
            conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
            response = conn.getresponse()
            assert response.status == 200, response.read()
            for line in response:
                if line.startswith(b"data: {") and b'"content":"' in line and b'"role"' not in line:
                    yield line
            finished = not response.will_close
        finally:
            if not (keep_alive and finished):
                connections.clear()
                conn.close()

    return events


def stdio_tokens(client, max_tokens: int):
    """Token events of one answer from a running `chat serve --stdio` (loaded once, like the service)."""

    def events():
        for event in client.chat(PROMPT, max_new_tokens=max_tokens):
            if isinstance(event, Token):
                yield event
        client.reset()  # every answer from the same empty history, like the stateless HTTP requests

    return events


def measure(modes: dict[str, Callable[[], object]], runs: int) -> dict[str, dict[str, float]]:
    """Median FTL/TPS per mode, and per mode the median of its round-by-round ratios to the first mode (the
    baseline). The modes take turns answer by answer after one warm-up answer each, so each round's answers
    share the machine's load of that moment (it drifts, and other work shares its 2 cores): the paired
    ratios cancel that drift, which the ratio of two medians does not."""
    results: dict[str, list[tuple[float, float, int]]] = {label: [] for label in modes}
    for attempt in range(runs + 1):
        for label, events in modes.items():
            result = timed_stream(events)
            if attempt:
                results[label].append(result)
    baseline = results[next(iter(modes))]
    rows = {}
    for label, answers in results.items():
        rows[label] = {
            "ftl": statistics.median(a[0] for a in answers),
            "tps": statistics.median(a[1] for a in answers),
            "ftl_ratio": statistics.median(b[0] / a[0] for a, b in zip(answers, baseline, strict=True)),
            "tps_ratio": statistics.median(a[1] / b[1] for a, b in zip(answers, baseline, strict=True)),
        }
        row = rows[label]
        print(f"    {label:8} FTL {row['ftl'] * 1000:7.1f} ms   TPS {row['tps']:7.2f} tok/s", flush=True)
    return rows


def aggregate(address: str, port: int, key: str, clients: int, per_client: int, max_tokens: int) -> float:
    """Tokens per second of `clients` threads each asking `per_client` answers."""
    counts: list[int] = []
    lock = threading.Lock()

    def worker():
        ask = http_tokens(address, port, key, max_tokens)
        for _ in range(per_client):
            n = sum(1 for _ in ask())
            with lock:
                counts.append(n)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


class Gateway:
    def __init__(self, inventory: Path, limit: str | None) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        code = "from provision.cli.main import main; main()"
        command = [sys.executable, "-c", code, "gateway", "up", "-i", str(inventory)]
        command += ["--listen", f"127.0.0.1:{self.port}", *(["--limit", limit] if limit else [])]
        self.proc = subprocess.Popen(command, start_new_session=True, stderr=subprocess.DEVNULL)
        self.key = sophon_fleet("gateway", "key").strip()
        deadline = time.monotonic() + 30
        while True:
            try:
                sum(1 for _ in http_tokens("127.0.0.1", self.port, self.key, 2, keep_alive=False)())
                return
            except (OSError, AssertionError, http.client.HTTPException):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)


def speed_round(fleet: Fleet, transport, manifest, args, tpu_ms: int) -> None:
    for box in fleet.boxes:
        fleet.fault(box.name, "slow-tpu", str(tpu_ms))
    title = f"slow-tpu {tpu_ms} ms per graph (~{tpu_ms * GRAPHS_PER_TOKEN} ms/token)" if tpu_ms else "natural"
    print(f"\n  {title}: one box (se7-1), {args.runs} answers of {args.tokens} tokens each", flush=True)
    address = fleet.state.box("se7-1").address
    box_key = sophon_fleet("serve", "key", "-i", str(fleet.inventory_path), "--limit", "se7-1").strip()
    one = Gateway(fleet.inventory_path, "se7-1")
    try:
        with runtime_session(transport, manifest, "int4", "se7-1") as client:
            client.wait_ready()
            modes = {
                "stdio": stdio_tokens(client, args.tokens),
                "http": http_tokens(address, 8000, box_key, args.tokens),
                "http-new": http_tokens(address, 8000, box_key, args.tokens, keep_alive=False),
                "gateway": http_tokens("127.0.0.1", one.port, one.key, args.tokens),
            }
            rows = measure(modes, args.runs)
    finally:
        one.stop()
    stdio = rows["stdio"]
    ratios = (("http / stdio", "http", 0.97), ("http-new / stdio", "http-new", 0.97))
    for label, mode, target in (*ratios, ("gateway / stdio", "gateway", 0.95)):
        row = rows[mode]
        print(
            f"    {label:16} FTL {row['ftl_ratio']:.3f}x (speed, higher is better)  "
            f"TPS {row['tps_ratio']:.3f}x   target >= {target}x   "
            f"(paired, median of {args.runs} rounds; ratio of the medians: "
            f"FTL {stdio['ftl'] / row['ftl']:.3f}x, TPS {row['tps'] / stdio['tps']:.3f}x)",
            flush=True,
        )
    single = aggregate(address, 8000, box_key, 1, args.per_client * 2, args.tokens)
    every = Gateway(fleet.inventory_path, None)
    try:
        fleet_rate = aggregate("127.0.0.1", every.port, every.key, 12, args.per_client, args.tokens)
    finally:
        every.stop()
    print(
        f"    one box {single:.1f} tok/s; 3 boxes, 12 clients through the gateway {fleet_rate:.1f} tok/s: "
        f"{fleet_rate / single:.2f}x   target >= 2.7x",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=48, help="max_tokens of each answer (SEQLEN is 128)")
    parser.add_argument("--per-client", type=int, default=2, help="answers per client in the scaling run")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    os.environ.update(
        SOPHON_FLEET_HOME=str(work / "home"),
        SOPHON_FLEET_CACHE=str(work / "cache"),
        SOPHON_FLEET_SSH_CONFIG=str(work / "no-ssh-config"),
        SOPHON_FLEET_MODEL=SIM_MODEL,
    )
    fleet = Fleet.up(work / "fleet", ["se7-ready-int8"] * 3, mirror=True)
    os.environ["SOPHON_FLEET_MODELS"] = str(fleet.manifest_path.parent)
    try:
        inventory = str(fleet.inventory_path)
        print("setting up: assets pull/push int4, deploy, serve up (3 boxes)", flush=True)
        sophon_fleet("assets", "pull", "--variant", "int4", "--no-dfss")
        sophon_fleet("assets", "push", "-i", inventory, "--variant", "int4")
        sophon_fleet("deploy", "-i", inventory)
        sophon_fleet("serve", "up", "-i", inventory)
        manifest = load_manifest(SIM_MODEL)
        host = load_inventory([fleet.inventory_path], limit="se7-1").hosts[0]
        with Connector(Trust(work / "home" / "known_hosts")) as connector:
            transport = connector.transport(host)
            natural_ms = 0
            speed_round(fleet, transport, manifest, args, natural_ms)
            speed_round(fleet, transport, manifest, args, REAL_TOKEN_MS // GRAPHS_PER_TOKEN)
    finally:
        fleet.down()


if __name__ == "__main__":
    main()
