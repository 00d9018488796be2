"""Events as feeds produce them, and their Server-Sent Events framing (done once per event)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from dashboard.errors import InvalidEvent

# Event types the server itself publishes (the page listens for them on every topic).
STATUS_EVENT = "status"  # a feed's state: running, restarting (with the error), finished...
GAP_EVENT = "gap"  # to a resuming reader: it missed events, or its id is not this server's
ALERT_EVENT = "alert"  # an alert rule's state change, on the rule's notify topic

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(slots=True)
class Event:
    """One event from a feed.

    `data` is JSON-serialisable or a str; `event` is the SSE event type (default `message`);
    `id` is assigned by the broker when not given.
    """

    data: Any
    event: str | None = None
    id: str | None = None


def encode_data(data: Any) -> str:
    """The text an event's `data:` field carries: a str as is, anything else as compact JSON.

    Total: what it returns is valid UTF-8 (and valid JSON, unless `data` is a str), so every reader
    can be sent it; anything else raises InvalidEvent naming the part at fault (a lone surrogate,
    NaN or Infinity, a key or an object JSON cannot hold, a reference cycle)."""
    if isinstance(data, str):
        text = data
    else:
        try:
            text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidEvent(f"event data cannot be sent: {json_problem(data) or exc}") from None
    if not text.isascii() and not is_utf8(text):
        raise InvalidEvent(f"event data cannot be sent: {json_problem(data)}")
    return text


MAX_EVENT_TYPE = 100  # characters in an event's SSE type


def event_type(name: Any) -> str:
    """An event's SSE type, checked (default `message`): printable text (line breaks become
    spaces, as framing would make them), valid UTF-8."""
    if name is None or name == "":
        return "message"
    if not isinstance(name, str):
        raise InvalidEvent(f"Event.event must be a str, got {type(name).__name__}")
    name = _field_value(name)
    if len(name) > MAX_EVENT_TYPE or not name.isprintable():
        raise InvalidEvent(
            f"Event.event must be printable text of at most {MAX_EVENT_TYPE} characters, got {name[:40]!a}"
        )
    return name


def json_text(value: Any) -> str:
    """Compact JSON of a value from outside (a provider's answer), as text that encodes to UTF-8:
    non-ASCII as is, except that a lone surrogate (legal in JSON) stays escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if text.isascii() or is_utf8(text):
        return text
    return json.dumps(value, separators=(",", ":"))


def is_utf8(text: str) -> bool:
    """Whether `text` can be encoded as UTF-8 (it holds no lone surrogate)."""
    return _SURROGATE.search(text) is None


def valid_text(text: str) -> str:
    """`text` with split surrogate pairs joined and lone surrogates replaced by U+FFFD: for text
    from elsewhere (a provider's answer) that must reach readers whatever it holds."""
    if text.isascii() or is_utf8(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def json_problem(value: Any, path: str = "$", depth: int = 0) -> str | None:
    """What keeps `value` from being sent as JSON in UTF-8, naming where (`$.prompt`, `$[2]`); None
    when nothing does. For error messages: called once something failed."""
    if depth > 200:
        return "it is nested over 200 levels deep, or holds itself"
    if isinstance(value, str):
        if not is_utf8(value):
            found = _SURROGATE.search(value)
            assert found is not None
            return f"{path} holds a lone surrogate (\\u{ord(found.group()):04x}), which UTF-8 cannot carry"
        return None
    if isinstance(value, bool | int) or value is None:
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is {value!r}, which JSON cannot hold"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str | int | float | bool) and key is not None:
                return f"{path} has a key of type {type(key).__name__} ({key!r:.40}), JSON keys are strings"
            problem = json_problem(key, f"{path} key", depth + 1) or json_problem(
                item, f"{path}.{key}", depth + 1
            )
            if problem:
                return problem
        return None
    if isinstance(value, list | tuple):
        for n, item in enumerate(value):
            if problem := json_problem(item, f"{path}[{n}]", depth + 1):
                return problem
        return None
    return f"{path} is a {type(value).__name__}, which JSON cannot hold"


def _field_value(value: str) -> str:
    """A single-line field value: line breaks cannot start a forged field."""
    return _LINE_BREAK.sub(" ", value)


def encode_frame(data: str, event: str | None = None, id: str | int | None = None) -> bytes:
    """One SSE frame. Every line of `data` gets its own `data:` line, whatever its line breaks."""
    parts: list[str] = []
    if id is not None:
        parts.append(f"id: {_field_value(str(id))}\n")
    if event and event != "message":
        parts.append(f"event: {_field_value(event)}\n")
    for line in _LINE_BREAK.split(data):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    # "replace": a stored message from elsewhere (a broker written to by another program) that
    # holds a lone surrogate still frames; encode_data() refuses such data before it is stored.
    return "".join(parts).encode("utf-8", "replace")


def encode_comment(text: str) -> bytes:
    """An SSE comment (keepalive); ignored by clients."""
    return "".join(f": {line}\n" for line in _LINE_BREAK.split(text)).encode() + b"\n"


def encode_retry(ms: int) -> bytes:
    return f"retry: {int(ms)}\n\n".encode()


@dataclass(slots=True)
class Message:
    """An event as stored by the broker: its id, topic, type and encoded data.

    `wire` is for whoever writes messages out (the web layer keeps a message's SSE frames there):
    it encodes a message once, on its first delivery, however many subscribers receive it.
    """

    id: int
    topic: str
    event: str
    data: str
    ts: float
    wire: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def build(cls, id: int, topic: str, event: str | None, data: str, ts: float) -> Message:
        return cls(id, topic, event or "message", data, ts)

    def as_json(self) -> dict[str, Any]:
        """The message as a JSON object (for APIs and tests); data decoded when it is JSON."""
        try:
            data: Any = json.loads(self.data)
        except ValueError:
            data = self.data
        return {
            "id": self.id,
            "topic": self.topic,
            "event": self.event,
            "data": data,
            "ts": self.ts,
        }
