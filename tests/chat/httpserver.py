"""A real `python -m chat serve --http` on 127.0.0.1 over the emulator's stand-in model, for tests."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.chat.conftest import ROOT, subprocess_env

MODEL_ID = "glm4-stand-in"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, timeout: float = 5.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@contextlib.contextmanager
def chat_http_server(
    standin, *, delay_ms: int = 0, queue: int = 8, extra: tuple[str, ...] = (), log: Path | None = None
) -> Iterator[str]:
    """Start the server, wait until /health says ready, yield its base URL; stop it (and check it was still
    running: a crash during the test is a failure)."""
    port = free_port()
    env = subprocess_env()
    if delay_ms:
        env["SOPHON_SIM_TPU_DELAY_MS"] = str(delay_ms)
    cmd = [
        sys.executable,
        "-m",
        "chat",
        "serve",
        "--http",
        f"127.0.0.1:{port}",
        "--bmodel",
        str(standin.bmodel),
        "--token",
        str(standin.token_dir),
        "--model-name",
        MODEL_ID,
        "--variant",
        "int4",
        "--queue",
        str(queue),
        *extra,
    ]
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"the server exited with {proc.returncode}"
            try:
                if get_json(base + "/health", timeout=1)[1].get("ready"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready in 30 s"
            time.sleep(0.05)
        yield base
        assert proc.poll() is None, f"the server died during the test (exit {proc.returncode})"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if log:
            out.close()


def metric(base: str, name: str) -> float:
    """One sample of /metrics (`name` including labels), 0 when absent."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0
