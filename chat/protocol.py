"""The JSON-lines protocol of `python3 -m chat serve --stdio` — its single definition.

One JSON object per line, UTF-8, in both directions.

Requests (client → runtime):
    {"op": "chat", "id": ID, "prompt": STR, "max_new_tokens"?: INT > 0,
     "sampling"?: {"temperature"?: >0, "top_p"?: (0, 1], "penalty"?: >0, "seed"?: INT}}
        (no "sampling" → greedy)
    {"op": "reset"}              forget the conversation history
    {"op": "stats"}              counters of this server
    {"op": "cancel", "id": ID}   stop that chat between two tokens (or before it starts, if still queued)
    {"op": "quit"}               exit after the current answer (end of input does the same)
ID is a string or an integer chosen by the client.

Events (runtime → client):
    {"event": "ready", "model": STR, "seqlen": INT, "load_s": FLOAT}        once, first
    {"event": "token", "id": ID, "text": STR}                              complete UTF-8 characters only
    {"event": "done", "id": ID, "tokens": INT, "ftl_s": FLOAT, "tps": FLOAT, "stop": "eos"|"length"|"cancel"}
    {"event": "error", "id"?: ID, "code": STR, "message": STR}
    {"event": "reset"}                                                      answer to "reset"
    {"event": "stats", "answers": INT, "tokens": INT, "turns": INT, "last_ftl_s": FLOAT|null,
     "last_tps": FLOAT|null, "seqlen": INT, "model": STR}                   answer to "stats"
Error codes: bad_request (not JSON / invalid fields / unknown op), too_long (prompt cannot fit SEQLEN),
model (device failure), internal.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

from .errors import ProtocolError

OPS = ("chat", "reset", "stats", "cancel", "quit")
STOP_REASONS = ("eos", "length", "cancel")
_SAMPLING_CHECKS = {
    "temperature": lambda v: isinstance(v, (int, float)) and v > 0,
    "top_p": lambda v: isinstance(v, (int, float)) and 0 < v <= 1,
    "penalty": lambda v: isinstance(v, (int, float)) and v > 0,
    "seed": lambda v: isinstance(v, int) and not isinstance(v, bool),
}


def _is_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def parse_request(line: str) -> Dict[str, Any]:
    """Validate one request line and return it as a dict.

    Raises:
        ProtocolError: not a JSON object, unknown op, or a missing/invalid field (named in the message).
    """
    try:
        request = json.loads(line)
    except ValueError as error:
        raise ProtocolError("not JSON: %s" % error)
    if not isinstance(request, dict):
        raise ProtocolError("a request must be a JSON object")
    op = request.get("op")
    if op not in OPS:
        raise ProtocolError("unknown op %r; expected one of %s" % (op, ", ".join(OPS)))
    if op in ("chat", "cancel") and not _is_id(request.get("id")):
        raise ProtocolError("%s needs an id (string or integer)" % op)
    if op == "chat":
        _check_chat(request)
    return request


def _check_chat(request: Dict[str, Any]) -> None:
    if not isinstance(request.get("prompt"), str):
        raise ProtocolError("chat needs a prompt (string)")
    limit = request.get("max_new_tokens")
    if limit is not None and not (isinstance(limit, int) and not isinstance(limit, bool) and limit > 0):
        raise ProtocolError("max_new_tokens must be a positive integer")
    sampling = request.get("sampling")
    if sampling is None:
        return
    if not isinstance(sampling, dict):
        raise ProtocolError("sampling must be an object")
    for key, value in sampling.items():
        if key not in _SAMPLING_CHECKS:
            raise ProtocolError("unknown sampling field %r; expected %s" % (key, ", ".join(_SAMPLING_CHECKS)))
        if not _SAMPLING_CHECKS[key](value):
            raise ProtocolError("sampling.%s has an invalid value %r" % (key, value))


def ready_event(model: str, seqlen: int, load_s: float) -> Dict[str, Any]:
    return {"event": "ready", "model": model, "seqlen": seqlen, "load_s": round(load_s, 3)}


def token_event(request_id: Any, text: str) -> Dict[str, Any]:
    return {"event": "token", "id": request_id, "text": text}


def done_event(request_id: Any, tokens: int, ftl_s: float, tps: float, stop: str) -> Dict[str, Any]:
    if stop not in STOP_REASONS:
        raise ValueError("stop must be one of %s" % (STOP_REASONS,))
    return {
        "event": "done",
        "id": request_id,
        "tokens": tokens,
        "ftl_s": round(ftl_s, 4),
        "tps": round(tps, 3),
        "stop": stop,
    }


def error_event(code: str, message: str, request_id: Optional[Any] = None) -> Dict[str, Any]:
    event = {"event": "error", "code": code, "message": message}  # type: Dict[str, Any]
    if request_id is not None:
        event["id"] = request_id
    return event


def reset_event() -> Dict[str, Any]:
    return {"event": "reset"}


def stats_event(stats: Dict[str, Any]) -> Dict[str, Any]:
    event = {"event": "stats"}  # type: Dict[str, Any]
    event.update(stats)
    return event


def encode(event: Dict[str, Any]) -> bytes:
    """One event as a UTF-8 JSON line (non-ASCII kept as is, whatever the box's locale)."""
    return (json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
