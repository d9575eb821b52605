"""OpenAI Chat Completions, as the box serves it: request validation, stop strings, response documents.

Pure functions and small classes, no I/O: `http_server.py` does the serving. What is accepted:
    model (str, must be the served model), messages (system/user/assistant; content a string or text parts),
    stream, stream_options.include_usage, max_tokens / max_completion_tokens, temperature, top_p, seed, stop
    (a string or up to 4), and the no-op values n=1, logprobs=false, tools=[]/absent, user, metadata.
Anything else is a 400 that names the field: a parameter the box does not support is never silently ignored.
Errors have OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from .model import Sampling

ROLES = ("system", "user", "assistant")
MAX_STOP_STRINGS = 4
# accepted only with the value that means "not used"; any other value is a 400 naming the field
NEUTRAL_VALUES = {
    "n": (1,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "tools": ([],),
    "tool_choice": ("none",),
    "functions": ([],),
    "parallel_tool_calls": (False, True),
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "response_format": ({"type": "text"},),
    "logit_bias": ({},),
}
IGNORED_FIELDS = ("user", "metadata", "store", "service_tier")  # bookkeeping only; no effect on generation
KNOWN_FIELDS = (
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
)


class ApiError(Exception):
    """An error answer: HTTP status plus OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: Optional[str] = None,
        code: Optional[str] = None,
        headers: Optional[Dict[str, str]] = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> Dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_field(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")


class ChatRequest(NamedTuple):
    messages: List[Dict[str, str]]
    stream: bool
    include_usage: bool
    max_tokens: Optional[int]
    sampling: Optional[Sampling]  # None: greedy
    stop: List[str]


def parse_chat_request(body: bytes, model_ids: Sequence[str]) -> ChatRequest:
    """Validate a request body.

    Raises:
        ApiError: 400 for malformed JSON, a wrong type or an unsupported parameter (naming it); 404 for
            another model.
    """
    try:
        request = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ApiError(400, "the request body is not valid JSON: %s" % error, code="invalid_json")
    if not isinstance(request, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    _check_unsupported(request)
    model = request.get("model")
    if not isinstance(model, str):
        raise bad_field("model", "'model' is required and must be a string")
    if model not in model_ids:
        raise ApiError(
            404,
            "the model %r does not exist here; this server serves %s" % (model, ", ".join(model_ids)),
            param="model",
            code="model_not_found",
        )
    stream = _optional(request, "stream", bool, False)
    options = _optional(request, "stream_options", dict, {})
    if options and not stream:
        raise bad_field("stream_options", "'stream_options' is only allowed with 'stream': true")
    unknown = sorted(set(options) - {"include_usage"})
    if unknown:
        raise bad_field("stream_options", "stream_options.%s is not supported" % unknown[0])
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise bad_field("stream_options", "stream_options.include_usage must be a boolean")
    return ChatRequest(
        messages=_messages(request.get("messages")),
        stream=stream,
        include_usage=include_usage,
        max_tokens=_max_tokens(request),
        sampling=_sampling(request),
        stop=_stop(request.get("stop")),
    )


def _check_unsupported(request: Dict[str, Any]) -> None:
    for key, value in request.items():
        if key in KNOWN_FIELDS or key in IGNORED_FIELDS or value is None:
            continue
        if key in NEUTRAL_VALUES:
            if not any(value == v and type(value) is type(v) for v in NEUTRAL_VALUES[key]):
                raise ApiError(
                    400,
                    "'%s' = %s is not supported by this server (one generation, text only)"
                    % (key, json.dumps(value)),
                    param=key,
                    code="unsupported_parameter",
                )
            continue
        raise ApiError(
            400, "unrecognized request argument supplied: %s" % key, param=key, code="unsupported_parameter"
        )


def _optional(request: Dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = request.get(key)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise bad_field(key, "'%s' must be %s, got %s" % (key, _kind_name(kind), json.dumps(value)))
    return value


def _kind_name(kind: type) -> str:
    return {bool: "a boolean", dict: "an object", str: "a string", list: "an array"}.get(kind, kind.__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _messages(messages: Any) -> List[Dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise bad_field("messages", "'messages' must be a non-empty array")
    out = []
    for i, message in enumerate(messages):
        where = "messages[%d]" % i
        if not isinstance(message, dict):
            raise bad_field(where, "%s must be an object" % where)
        role = message.get("role")
        if role not in ROLES:
            raise bad_field(
                where + ".role", "%s.role must be one of %s, got %r" % (where, ", ".join(ROLES), role)
            )
        for key in message:
            if key not in ("role", "content", "name"):
                raise ApiError(
                    400,
                    "%s.%s is not supported" % (where, key),
                    param=where + "." + key,
                    code="unsupported_parameter",
                )
        out.append({"role": role, "content": _content(message.get("content"), where + ".content")})
    if out[-1]["role"] == "assistant":
        raise bad_field("messages", "the last message must be from the user or system, not the assistant")
    return out


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not (
                isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            ):
                raise bad_field("%s[%d]" % (where, i), "%s[%d]: only text parts are supported" % (where, i))
            texts.append(part["text"])
        return "".join(texts)
    raise bad_field(where, "%s must be a string or an array of text parts" % where)


def _max_tokens(request: Dict[str, Any]) -> Optional[int]:
    limit = None
    for key in ("max_completion_tokens", "max_tokens"):
        value = request.get(key)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise bad_field(key, "'%s' must be a positive integer, got %s" % (key, json.dumps(value)))
        limit = value if limit is None else min(limit, value)
    return limit


def _sampling(request: Dict[str, Any]) -> Optional[Sampling]:
    temperature, top_p, seed = request.get("temperature"), request.get("top_p"), request.get("seed")
    if temperature is not None and not (_is_number(temperature) and 0 <= temperature <= 2):
        raise bad_field(
            "temperature", "'temperature' must be a number in [0, 2], got %s" % json.dumps(temperature)
        )
    if top_p is not None and not (_is_number(top_p) and 0 < top_p <= 1):
        raise bad_field("top_p", "'top_p' must be a number in (0, 1], got %s" % json.dumps(top_p))
    if seed is not None and not _is_int(seed):
        raise bad_field("seed", "'seed' must be an integer, got %s" % json.dumps(seed))
    if temperature == 0 or (temperature is None and top_p is None and seed is None):
        return None  # greedy: what the REPL and the stdio server do without sampling
    return Sampling(
        temperature=float(temperature if temperature is not None else 1.0),
        top_p=float(top_p if top_p is not None else 1.0),
        seed=seed,
    )


def _stop(stop: Any) -> List[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad_field("stop", "'stop' must be a non-empty string or an array of them")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad_field("stop", "'stop' takes at most %d strings, got %d" % (MAX_STOP_STRINGS, len(stops)))
    return stops


def context_error(prompt_tokens: int, max_tokens: Optional[int], seqlen: int) -> Optional[ApiError]:
    """The 400 for a conversation that does not fit SEQLEN (with the counts), or None when it fits."""
    wanted = prompt_tokens + (max_tokens or 1)
    if wanted <= seqlen:
        return None
    return ApiError(
        400,
        "This model's maximum context length is %d tokens. However, you requested %d tokens "
        "(%d in the messages, %d in the completion). Please reduce the length of the messages or completion."
        % (seqlen, wanted, prompt_tokens, max_tokens or 1),
        param="messages",
        code="context_length_exceeded",
    )


class StopMatcher:
    """Cuts the answer at the first stop string, holding back text that may be the start of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = list(stops)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Text that is safe to emit now; sets `stopped` when a stop string was found."""
        if not self.stops:
            return text
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending, self.stopped = self.pending[:cut], "", True
            return out
        keep = len(self.pending) - self.hold
        if keep <= 0:
            return ""
        out, self.pending = self.pending[:keep], self.pending[keep:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> Dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chunk(
    cid: str, model: str, created: int, delta: Dict[str, Any], finish_reason: Optional[str] = None
) -> Dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def usage_chunk(cid: str, model: str, created: int, counts: Dict[str, int]) -> Dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": counts,
    }


def completion(
    cid: str, model: str, created: int, text: str, finish_reason: str, counts: Dict[str, int]
) -> Dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": counts,
    }


def models_list(model_ids: Sequence[str], created: int) -> Dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": created, "owned_by": "sophon-fleet"} for m in model_ids
        ],
    }


def sse(document: Any) -> bytes:
    """One server-sent event: `data: <json>` and a blank line."""
    text = (
        document
        if isinstance(document, str)
        else json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    )
    return ("data: %s\n\n" % text).encode("utf-8")


def now() -> int:
    return int(time.time())


def split_addr(value: str) -> Tuple[str, int]:
    """`ADDR:PORT` (IPv6 as `[::1]:8000`) → (host, port). Raises ValueError naming the value."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected ADDR:PORT, got %r" % value)
    return host.strip("[]") or "0.0.0.0", int(port)
