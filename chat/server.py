"""`python3 -m chat serve --stdio`: the JSON-lines server (protocol in protocol.py).

A reader thread reads stdin while the main thread generates, so a `cancel` takes effect between two tokens
of the running answer; other requests queue up and run in order. Only complete lines are written, under a
lock, to the binary stdout, flushed per event.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, BinaryIO, Dict, Optional  # noqa: F401 (type comments)

from . import protocol
from .errors import ChatError, ProtocolError
from .generate import ChatSession, Done
from .model import Sampling

_END = object()


class StdioServer:
    """Serve one ChatSession over a pair of binary streams."""

    def __init__(
        self, session: ChatSession, model_name: str, load_s: float, stdin: BinaryIO, stdout: BinaryIO
    ) -> None:
        self.session = session
        self.model_name = model_name
        self.load_s = load_s
        self._stdin = stdin
        self._stdout = stdout
        self._write_lock = threading.Lock()
        self._requests = queue.Queue()  # type: queue.Queue
        self._cancel_lock = threading.Lock()
        self._active_id = None  # type: Optional[Any]
        self._active_cancelled = threading.Event()
        self._cancelled_ids = set()  # type: set

    def emit(self, event: Dict[str, Any]) -> None:
        with self._write_lock:
            self._stdout.write(protocol.encode(event))
            self._stdout.flush()

    def _read_requests(self) -> None:
        """Reader thread: parse lines, apply cancels at once, queue everything else."""
        for raw in iter(self._stdin.readline, b""):
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            try:
                request = protocol.parse_request(line)
            except ProtocolError as error:
                self.emit(protocol.error_event(error.code, str(error)))
                continue
            if request["op"] == "cancel":
                self._cancel(request["id"])
                continue
            self._requests.put(request)
            if request["op"] == "quit":
                break
        self._requests.put(_END)

    def _cancel(self, request_id: Any) -> None:
        with self._cancel_lock:
            if request_id == self._active_id:
                self._active_cancelled.set()
            else:
                self._cancelled_ids.add(request_id)

    def serve(self) -> None:
        """Emit `ready`, then handle requests until `quit` or end of input."""
        reader = threading.Thread(target=self._read_requests, name="chat-stdin", daemon=True)
        reader.start()
        self.emit(protocol.ready_event(self.model_name, self.session.model.seqlen, self.load_s))
        while True:
            request = self._requests.get()
            if request is _END or request["op"] == "quit":
                return
            self._handle(request)

    def _handle(self, request: Dict[str, Any]) -> None:
        op = request["op"]
        if op == "reset":
            self.session.reset()
            self.emit(protocol.reset_event())
        elif op == "stats":
            stats = dict(self.session.stats(), seqlen=self.session.model.seqlen, model=self.model_name)
            self.emit(protocol.stats_event(stats))
        elif op == "chat":
            self._chat(request)

    def _chat(self, request: Dict[str, Any]) -> None:
        request_id = request["id"]
        with self._cancel_lock:
            if request_id in self._cancelled_ids:
                self._cancelled_ids.discard(request_id)
                self.emit(protocol.done_event(request_id, 0, 0.0, 0.0, "cancel"))
                return
            self._active_id = request_id
            self._active_cancelled.clear()
        sampling = Sampling(**request["sampling"]) if request.get("sampling") is not None else None
        try:
            events = self.session.chat(
                request["prompt"], request.get("max_new_tokens"), sampling, self._active_cancelled.is_set
            )
            for event in events:
                if isinstance(event, Done):
                    self.emit(
                        protocol.done_event(request_id, event.tokens, event.ftl_s, event.tps, event.stop)
                    )
                else:
                    self.emit(protocol.token_event(request_id, event.text))
        except ChatError as error:
            self.emit(protocol.error_event(error.code, str(error), request_id))
        except RuntimeError as error:  # a SAIL/device failure inside a graph
            self.emit(protocol.error_event("model", str(error), request_id))
        finally:
            with self._cancel_lock:
                self._active_id = None
