"""Client of the box's chat runtime: `python3 -m chat serve --stdio` (JSON lines, `chat/protocol.py`).

The client works over any pair of byte streams — an SSH exec channel (`Transport.open_exec`) on a real or
simulated box, or a local pipe in tests. A reader thread turns lines into events, so the caller can send a
`cancel` while an answer streams. Answers are iterators of `Token` events ending with one `Done`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
import shlex
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from provision.boxpaths import RUNTIME_LINK
from provision.errors import ChannelBroken, ConnectError, NotReadyError, RemoteError
from provision.facts.parse import Facts
from provision.manifest import Manifest
from provision.runtime.deploy import model_paths
from provision.ssh.transport import ChannelFile, Transport

_EOF = object()


@dataclass(frozen=True)
class Ready:
    model: str
    seqlen: int
    load_s: float


@dataclass(frozen=True)
class Token:
    text: str


@dataclass(frozen=True)
class Done:
    tokens: int
    ftl_s: float
    tps: float
    stop: str  # eos | length | cancel


class ChatClient:
    """Talk to one chat server; `name` is used in error messages (the box)."""

    def __init__(
        self,
        stdin: IO[bytes] | ChannelFile,
        stdout: IO[bytes] | ChannelFile,
        *,
        name: str = "box",
        timeout: float = 300.0,
    ) -> None:
        self.name, self.timeout = name, timeout
        self._stdin, self._stdout = stdin, stdout
        self._events: queue.Queue[Any] = queue.Queue()
        self._ids = itertools.count(1)
        self._write_lock = threading.Lock()
        self.active_id: int | None = None
        threading.Thread(target=self._read, name=f"chat-{name}", daemon=True).start()

    def _read(self) -> None:
        try:
            for raw in iter(self._stdout.readline, b""):
                line = raw.strip()
                if line:
                    try:
                        self._events.put(json.loads(line))
                    except ValueError:
                        self._events.put(
                            {"event": "error", "code": "bad_output", "message": line[:200].decode()}
                        )
        except (OSError, EOFError, ChannelBroken):  # local pipes (tests) raise OSError; a box's channel, ours
            pass
        self._events.put(_EOF)

    def _send(self, request: dict[str, Any]) -> None:
        data = (json.dumps(request, ensure_ascii=False) + "\n").encode()
        try:
            with self._write_lock:
                self._stdin.write(data)
                self._stdin.flush()
        except (OSError, EOFError, ChannelBroken) as exc:
            raise ConnectError(f"{self.name}: connection to the chat runtime lost ({exc})") from exc

    def _next(self, timeout: float | None = None) -> dict[str, Any]:
        try:
            event = self._events.get(timeout=self.timeout if timeout is None else timeout)
        except queue.Empty:
            raise RemoteError(f"{self.name}: the chat runtime sent nothing for {self.timeout:g} s") from None
        if event is _EOF:
            self._events.put(_EOF)  # every later read sees the end too
            raise ConnectError(
                f"{self.name}: connection to the chat runtime lost",
                hint="check the box is up (`sophon-fleet preflight`) and try again",
            )
        return event

    def _expect(self, kind: str, timeout: float | None = None) -> dict[str, Any]:
        while True:
            event = self._next(timeout)
            if event.get("event") == kind:
                return event
            if event.get("event") == "error" and "id" not in event:
                raise RemoteError(
                    f"{self.name}: chat runtime error {event.get('code')}: {event.get('message')}"
                )

    def wait_ready(self, timeout: float | None = None) -> Ready:
        """Wait for the model to load; `load_s` is what the box reports."""
        event = self._expect("ready", timeout)
        return Ready(str(event["model"]), int(event["seqlen"]), float(event["load_s"]))

    def chat(
        self, prompt: str, *, max_new_tokens: int | None = None, sampling: dict[str, Any] | None = None
    ) -> AnswerStream:
        """Ask; iterate the result for `Token`s as they stream, then one `Done`. RemoteError on a runtime
        error. A KeyboardInterrupt while waiting leaves the stream usable: `cancel()`, then keep iterating."""
        request_id = next(self._ids)
        request: dict[str, Any] = {"op": "chat", "id": request_id, "prompt": prompt}
        if max_new_tokens is not None:
            request["max_new_tokens"] = max_new_tokens
        if sampling:
            request["sampling"] = sampling
        self.active_id = request_id
        self._send(request)
        return AnswerStream(self, request_id)

    def cancel(self) -> None:
        """Stop the answer that is streaming (between two tokens); its `Done` says `stop: cancel`."""
        if self.active_id is not None:
            self._send({"op": "cancel", "id": self.active_id})

    def reset(self) -> None:
        self._send({"op": "reset"})
        self._expect("reset")

    def stats(self) -> dict[str, Any]:
        self._send({"op": "stats"})
        event = self._expect("stats")
        return {k: v for k, v in event.items() if k != "event"}

    def quit(self) -> None:
        """Ask the runtime to exit and close our side; harmless when the connection is gone."""
        try:
            self._send({"op": "quit"})
            self._stdin.close()
        except (ConnectError, OSError, ChannelBroken):
            pass


class AnswerStream:
    """The events of one answer. An iterator object (not a generator), so an interrupt while it waits does
    not end it: the caller may cancel and go on reading up to the `Done`."""

    def __init__(self, client: ChatClient, request_id: int) -> None:
        self.client, self.request_id, self.finished = client, request_id, False

    def __iter__(self) -> AnswerStream:
        return self

    def __next__(self) -> Token | Done:
        while not self.finished:
            event = self.client._next()
            if event.get("id") != self.request_id:
                continue  # late events of an earlier, cancelled answer
            kind = event.get("event")
            if kind == "token":
                return Token(str(event["text"]))
            if kind == "done":
                self._finish()
                return Done(
                    int(event["tokens"]), float(event["ftl_s"]), float(event["tps"]), str(event["stop"])
                )
            if kind == "error":
                self._finish()
                raise RemoteError(f"{self.client.name}: {event.get('code')}: {event.get('message')}")
        raise StopIteration

    def _finish(self) -> None:
        self.finished = True
        self.client.active_id = None


def answer_text(events: Iterator[Token | Done]) -> tuple[str, Done]:
    """Collect a whole answer: its text and its `Done`."""
    parts: list[str] = []
    for event in events:
        if isinstance(event, Token):
            parts.append(event.text)
        else:
            return "".join(parts), event
    raise RemoteError("the answer ended without a `done` event")


def choose_variant(facts: Facts, manifest: Manifest, variant: str, host: str) -> str:
    """The variant to chat with on this box, or NotReadyError saying what is missing and the fix.

    Checks, in order: the runtime is deployed, the variant's files are verified on the box, and the heaps
    (npu+vpp now) reach the variant's threshold. `auto` picks the best verified variant (int8, then
    int4).
    """
    if not facts.runtime:
        raise NotReadyError(
            f"{host}: the chat runtime is not deployed",
            hint=f"run `sophon-fleet deploy -i INVENTORY --limit {host}`",
        )
    verified = [a.variant for a in facts.assets if a.model == manifest.model and a.verified]
    if variant == "auto":
        variant = next((v.name for v in manifest.by_preference if v.name in verified), "")
        if not variant:
            raise NotReadyError(
                f"{host}: no verified {manifest.model} model on the box",
                hint=f"run `sophon-fleet assets push -i INVENTORY --limit {host}`",
            )
    elif variant not in verified:
        raise NotReadyError(
            f"{host}: the {variant} files are not verified on the box",
            hint=f"run `sophon-fleet assets push -i INVENTORY --limit {host} --variant {variant}`",
        )
    need = manifest.variant(variant).min_heap_mib
    if facts.heaps_now is not None and facts.heaps_now.usable < need:
        raise NotReadyError(
            f"{host}: npu+vpp is {facts.heaps_now.usable} MiB, {variant} needs {need} MiB",
            hint=f"run `sophon-fleet memory apply -i INVENTORY --limit {host} --variant {variant}`",
        )
    return variant


def serve_command(manifest: Manifest, variant: str) -> str:
    """The command that starts the deployed runtime's JSON-lines server for `variant` on a box."""
    bmodel, token = model_paths(manifest, variant)
    args = ["../venv/bin/python", "-m", "chat", "serve", "--stdio", "--bmodel", bmodel, "--token", token]
    return f"cd {RUNTIME_LINK}/app && exec " + " ".join(shlex.quote(a) for a in args)


@contextlib.contextmanager
def runtime_session(
    transport: Transport, manifest: Manifest, variant: str, host: str
) -> Iterator[ChatClient]:
    """The box's deployed runtime serving `variant` over an SSH exec channel; on leaving, it is told to quit
    and the channel closes, so nothing is left running on the box."""
    session = transport.open_exec(serve_command(manifest, variant))
    client = ChatClient(session.stdin, session.stdout, name=host)
    try:
        yield client
    finally:
        client.quit()
        session.close()
