"""`python3 -m chat serve --http ADDR:PORT`: OpenAI Chat Completions over the box's one TPU.

    POST /v1/chat/completions  stream or not (SSE `data:` chunks, `data: [DONE]`), see openai_api.py
    GET  /v1/models     the served model
    GET  /health        {"ready", "model", "variant", "busy", "queue_depth", "seqlen"}; 503 until loaded
    GET  /metrics       Prometheus text: requests by status, tokens, queue depth, FTL and TPS histograms

One generation at a time: a worker thread owns the model; requests wait FIFO up to `queue_bound`, past it a
429 with Retry-After. Before every token the worker checks that the client is still connected (a peek at its
socket), so a client that leaves mid-stream frees the TPU before the next token, and a queued request whose
client left is dropped without running. Off loopback every /v1 request needs `Authorization: Bearer KEY`
(compared in constant time); /health and /metrics carry no conversation data and need no key.
"""

from __future__ import annotations

import collections
import hmac
import ipaddress
import json
import math
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple  # noqa: F401

from . import openai_api as api
from .errors import ChatError
from .generate import Done, generate
from .template import apply_chat_template

MAX_BODY = 4 * 1024 * 1024
FTL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TPS_BUCKETS = (1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0, 50.0, 100.0, 500.0)
CLIENT_GONE = 499  # what the metrics call a request whose client left before the answer ended


def peer_gone(sock: socket.socket) -> bool:
    """True once the client has closed its side (readable with nothing to read) or the socket failed."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):
        return True


class Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str) -> List[str]:
        out = ['%s_bucket{le="%g"} %d' % (name, b, c) for b, c in zip(self.buckets, self.counts)]
        out.append('%s_bucket{le="+Inf"} %d' % (name, self.n))
        out.append("%s_sum %.6f" % (name, self.total))
        out.append("%s_count %d" % (name, self.n))
        return out


class Metrics:
    """Counters for /metrics; every update under one lock (handlers and the worker both write)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = collections.Counter()  # type: collections.Counter
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.dropped = 0
        self.ftl = Histogram(FTL_BUCKETS)
        self.tps = Histogram(TPS_BUCKETS)

    def count_request(self, status: int) -> None:
        with self.lock:
            self.requests[status] += 1

    def count_answer(self, prompt_tokens: int, done: Done) -> None:
        with self.lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += done.tokens
            self.ftl.observe(done.ftl_s)
            if done.tps > 0:
                self.tps.observe(done.tps)

    def render(self, queue_depth: int, busy: bool) -> str:
        with self.lock:
            lines = [
                "# HELP sophon_chat_requests_total Chat completions by HTTP status (499: client left)",
                "# TYPE sophon_chat_requests_total counter",
            ]
            lines += [
                'sophon_chat_requests_total{status="%d"} %d' % kv for kv in sorted(self.requests.items())
            ]
            for name, value, kind, text in (
                (
                    "sophon_chat_prompt_tokens_total",
                    self.prompt_tokens,
                    "counter",
                    "Prompt tokens prefilled.",
                ),
                (
                    "sophon_chat_completion_tokens_total",
                    self.completion_tokens,
                    "counter",
                    "Tokens generated.",
                ),
                ("sophon_chat_dropped_total", self.dropped, "counter", "Queued requests whose client left."),
                ("sophon_chat_queue_depth", queue_depth, "gauge", "Requests waiting for the TPU."),
                ("sophon_chat_busy", int(busy), "gauge", "1 while a generation runs."),
            ):
                lines += [
                    "# HELP %s %s" % (name, text),
                    "# TYPE %s %s" % (name, kind),
                    "%s %d" % (name, value),
                ]
            lines += [
                "# HELP sophon_chat_ftl_seconds First-token latency (prefill + first token).",
                "# TYPE sophon_chat_ftl_seconds histogram",
            ] + self.ftl.lines("sophon_chat_ftl_seconds")
            lines += [
                "# HELP sophon_chat_tokens_per_second Decode speed of each answer.",
                "# TYPE sophon_chat_tokens_per_second histogram",
            ]
            lines += self.tps.lines("sophon_chat_tokens_per_second")
        return "\n".join(lines) + "\n"


class Job:
    """One admitted request: what to generate, where the events go, and how to tell the client left."""

    def __init__(self, request: api.ChatRequest, prompt_ids: List[int], gone: Callable[[], bool]) -> None:
        self.request = request
        self.prompt_ids = prompt_ids
        self.gone = gone
        self.events = collections.deque()  # type: Deque[Tuple[str, Any]]
        self.ready = threading.Condition()

    def put(self, kind: str, value: Any = None) -> None:
        """Called by the worker. It then yields the GIL, so the handler sends the event now: the emulator's
        small numpy steps hold it, and the hand-off waited for the 5 ms switch interval (measured: the first
        token reached the handler 4.3 ms after it was made, 0.6 ms with the yield)."""
        with self.ready:
            self.events.append((kind, value))
            self.ready.notify()
        time.sleep(0)

    def get(self) -> Tuple[str, Any]:
        with self.ready:
            while not self.events:
                self.ready.wait()
            return self.events.popleft()


class Scheduler:
    """The one worker that owns the model: FIFO jobs, one at a time, each cancelled when its client leaves."""

    def __init__(self, metrics: Metrics, queue_bound: int) -> None:
        self.metrics = metrics
        self.queue_bound = queue_bound
        self.session = None  # type: Any  # a ChatSession once load() has it; the worker starts then
        self.load_error = None  # type: Optional[str]
        self.busy = False
        self._jobs = collections.deque()  # type: Deque[Job]
        self._cond = threading.Condition()
        self._recent = collections.deque(maxlen=16)  # type: Deque[float]  # seconds per answer

    @property
    def ready(self) -> bool:
        return self.session is not None

    @property
    def queue_depth(self) -> int:
        return len(self._jobs)

    def load(self, loader: Callable[[], Any]) -> None:
        """Load the model (in this thread), then run jobs forever."""
        try:
            self.session = loader()
        except ChatError as error:
            self.load_error = str(error)
            raise
        self._run()

    def submit(self, job: Job) -> None:
        """Queue `job`. Raises ApiError 429 (with Retry-After) past the bound."""
        with self._cond:
            if len(self._jobs) >= self.queue_bound:
                raise api.ApiError(
                    429,
                    "the box is busy: %d requests are waiting for its TPU; retry later" % len(self._jobs),
                    type_="rate_limit_exceeded",
                    code="queue_full",
                    headers={"Retry-After": str(self.retry_after())},
                )
            self._jobs.append(job)
            self._cond.notify()

    def retry_after(self) -> int:
        per_answer = sum(self._recent) / len(self._recent) if self._recent else 1.0
        return max(1, int(math.ceil(per_answer * (len(self._jobs) + 1))))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                job = self._jobs.popleft()
            if job.gone():
                with self.metrics.lock:
                    self.metrics.dropped += 1
                job.put("gone")
                continue
            self.busy = True
            started = time.monotonic()
            try:
                self._generate(job)
            finally:
                self.busy = False
                self._recent.append(time.monotonic() - started)

    def _generate(self, job: Job) -> None:
        session, request = self.session, job.request
        limit = request.max_tokens or (session.model.seqlen - len(job.prompt_ids))
        stops = api.StopMatcher(request.stop)
        try:
            events = generate(
                session.model,
                session.tokenizer,
                job.prompt_ids,
                limit,
                request.sampling,
                lambda: stops.stopped or job.gone(),
            )
            for event in events:
                if isinstance(event, Done):
                    self.metrics.count_answer(len(job.prompt_ids), event)
                    if event.stop == "cancel" and not stops.stopped:
                        job.put("gone")
                        return
                    tail = stops.flush() if not stops.stopped else ""
                    if tail:
                        job.put("text", tail)
                    reason = "length" if event.stop == "length" else "stop"
                    job.put("done", (reason, len(job.prompt_ids), event.tokens))
                    return
                text = stops.feed(event.text)
                if text:
                    job.put("text", text)
        except RuntimeError as error:  # a SAIL/device failure inside a graph
            job.put(
                "error", api.ApiError(500, "the TPU failed: %s" % error, type_="server_error", code="model")
            )


def is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


class ChatHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address: Tuple[str, int],
        scheduler: Scheduler,
        metrics: Metrics,
        model_id: str,
        variant: str,
        api_keys: Sequence[str],
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, ChatHandler)
        self.scheduler = scheduler
        self.metrics = metrics
        self.model_id = model_id
        self.variant = variant
        self.api_keys = [k.encode("utf-8") for k in api_keys if k]
        self.started = api.now()

    def key_ok(self, header: Optional[str]) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        given = header[len("Bearer ") :].strip().encode("utf-8")
        ok = False
        for key in self.api_keys:  # every key compared, in constant time each
            ok |= hmac.compare_digest(given, key)
        return ok


class ChatHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sophon-chat"
    server: ChatHTTPServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        sys.stderr.write("%s %s\n" % (self.address_string(), format % args))

    # ---- routing ---------------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._health()
        elif path == "/metrics":
            scheduler = self.server.scheduler
            text = self.server.metrics.render(scheduler.queue_depth, scheduler.busy)
            self._send(200, text.encode("utf-8"), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/v1/models":
            if self._authorized():
                self._json(200, api.models_list([self.server.model_id], self.server.started))
        else:
            self._error(api.ApiError(404, "no such endpoint: GET %s" % path, code="not_found"))

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path != "/v1/chat/completions":
            self._read_body()
            self._error(api.ApiError(404, "no such endpoint: POST %s" % path, code="not_found"))
            return
        body = self._read_body()
        if body is None or not self._authorized():
            return
        try:
            job = self._admit(body)
        except api.ApiError as error:
            self._error(error)
            return
        if job.request.stream:
            self._stream(job)
        else:
            self._answer(job)

    # ---- pieces ----------------------------------------------------------------------------------------

    def _health(self) -> None:
        scheduler = self.server.scheduler
        session = scheduler.session
        doc = {
            "ready": scheduler.ready,
            "model": self.server.model_id,
            "variant": self.server.variant,
            "busy": scheduler.busy,
            "queue_depth": scheduler.queue_depth,
            "seqlen": session.model.seqlen if session else None,
        }
        if scheduler.load_error:
            doc["error"] = scheduler.load_error
        self._json(200 if scheduler.ready else 503, doc)

    def _authorized(self) -> bool:
        if is_loopback(self.client_address[0]) or self.server.key_ok(self.headers.get("Authorization")):
            return True
        self._error(
            api.ApiError(
                401,
                "a valid API key is required (Authorization: Bearer KEY)",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        )
        return False

    def _read_body(self) -> Optional[bytes]:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._error(api.ApiError(411, "a Content-Length header is required", code="length_required"))
            self.close_connection = True
            return None
        if int(length) > MAX_BODY:
            self._error(api.ApiError(413, "the request body is larger than %d bytes" % MAX_BODY))
            self.close_connection = True
            return None
        return self.rfile.read(int(length))

    def _admit(self, body: bytes) -> Job:
        scheduler = self.server.scheduler
        request = api.parse_chat_request(body, [self.server.model_id])
        session = scheduler.session
        if session is None:
            raise api.ApiError(503, "the model is still loading", type_="server_error", code="loading")
        prompt_ids = apply_chat_template(session.tokenizer, request.messages)
        error = api.context_error(len(prompt_ids), request.max_tokens, session.model.seqlen)
        if error:
            raise error
        connection = self.connection
        job = Job(request, prompt_ids, lambda: peer_gone(connection))
        scheduler.submit(job)
        return job

    def _stream(self, job: Job) -> None:
        cid, created, model = api.completion_id(), api.now(), self.server.model_id
        kind, value = job.get()
        if kind == "gone":
            self._gone()
            return
        if kind == "error":
            self._error(value)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self._chunk(api.sse(api.chunk(cid, model, created, {"role": "assistant", "content": ""})))
            while True:
                if kind == "text":
                    self._chunk(api.sse(api.chunk(cid, model, created, {"content": value})))
                elif kind == "done":
                    reason, prompt_tokens, completion_tokens = value
                    self.server.metrics.count_request(200)  # before the client can see the end
                    tail = api.sse(api.chunk(cid, model, created, {}, reason))
                    if job.request.include_usage:
                        counts = api.usage(prompt_tokens, completion_tokens)
                        tail += api.sse(api.usage_chunk(cid, model, created, counts))
                    self._finish(tail + api.sse("[DONE]"))
                    return
                elif kind == "error":
                    self.server.metrics.count_request(value.status)
                    self._finish(api.sse(value.body()))
                    self.close_connection = True
                    return
                else:
                    self._gone()
                    return
                kind, value = job.get()
        except OSError:  # the client left while we wrote: the worker sees it before the next token
            self._gone()

    def _answer(self, job: Job) -> None:
        texts = []
        while True:
            kind, value = job.get()
            if kind == "text":
                texts.append(value)
            elif kind == "done":
                reason, prompt_tokens, completion_tokens = value
                doc = api.completion(
                    api.completion_id(),
                    self.server.model_id,
                    api.now(),
                    "".join(texts),
                    reason,
                    api.usage(prompt_tokens, completion_tokens),
                )
                self.server.metrics.count_request(200)
                self._json(200, doc)
                return
            elif kind == "error":
                self._error(value)
                return
            else:
                self._gone()
                return

    def _gone(self) -> None:
        self.server.metrics.count_request(CLIENT_GONE)
        self.close_connection = True

    def _finish(self, data: bytes) -> None:
        """The last chunks of a stream already counted: a client gone by now changes nothing."""
        try:
            self._chunk(data)
            self._chunk(b"")
        except OSError:
            self.close_connection = True

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _json(self, status: int, doc: Dict[str, Any], headers: Optional[Dict[str, str]] = None) -> None:
        body = json.dumps(doc, ensure_ascii=False).encode("utf-8")
        self._send(status, body, "application/json", headers)

    def _error(self, error: api.ApiError) -> None:
        if self.path.split("?", 1)[0] == "/v1/chat/completions":
            self.server.metrics.count_request(error.status)
        self._json(error.status, error.body(), error.headers)

    def _send(
        self, status: int, body: bytes, content_type: str, headers: Optional[Dict[str, str]] = None
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True


def serve_http(
    address: Tuple[str, int],
    loader: Callable[[], Any],
    model_id: str,
    variant: str,
    api_keys: Sequence[str],
    queue_bound: int = 8,
    on_listening: Callable[[ChatHTTPServer], None] = lambda server: None,
) -> None:
    """Listen at once (so /health answers while the model loads), load the model, serve until killed.

    Raises:
        ChatError: the model could not be loaded (the service manager restarts the server).
        OSError: the address cannot be bound.
    """
    metrics = Metrics()
    scheduler = Scheduler(metrics, queue_bound)
    server = ChatHTTPServer(address, scheduler, metrics, model_id, variant, api_keys)
    thread = threading.Thread(target=server.serve_forever, name="chat-http", daemon=True)
    thread.start()
    on_listening(server)
    try:
        scheduler.load(loader)
    finally:
        server.shutdown()
        server.server_close()
