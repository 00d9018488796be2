"""Events as feeds produce them, and their Server-Sent Events framing (done once per event)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


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
    """The text an event's `data:` field carries: a str as is, anything else as compact JSON."""
    if isinstance(data, str):
        return data
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)


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
    return "".join(parts).encode()


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
