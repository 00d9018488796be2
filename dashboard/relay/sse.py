"""An incremental Server-Sent Events parser for upstream streams: bytes in, whole events out.

Fragments may be split anywhere (even inside a CRLF); lines end with LF, CR or CRLF; comment lines
(keepalives) are counted and skipped. Data stays bytes so well-formed events can be passed on as is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_EOL = re.compile(rb"\r\n|\r|\n")
MAX_LINE = 4 << 20  # a line this long with no end is not an SSE stream


class SSEProtocolError(ValueError):
    """The bytes cannot be an SSE stream (a line beyond MAX_LINE)."""


@dataclass(slots=True)
class SSEEvent:
    data: bytes
    event: str | None = None
    id: str | None = None


class SSEParser:
    """Feed it chunks; it returns the events they complete."""

    __slots__ = ("_buf", "_data", "_event", "_id", "_skip_lf")

    def __init__(self) -> None:
        self._buf = b""
        self._skip_lf = False  # the last chunk ended in CR: a leading LF finishes that CRLF
        self._data: list[bytes] = []
        self._event: str | None = None
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._buf + chunk if self._buf else chunk
        events: list[SSEEvent] = []
        start = 0
        for match in _EOL.finditer(buf):
            self._line(buf[start : match.start()], events)
            start = match.end()
        if start == len(buf) and buf[-1:] == b"\r":
            self._skip_lf = True
        self._buf = buf[start:]
        if len(self._buf) > MAX_LINE:
            raise SSEProtocolError(f"a line of more than {MAX_LINE} bytes with no line end")
        return events

    @property
    def pending(self) -> bool:
        """Whether a partial line or an undispatched event (its data or its type) is buffered: a
        stream cut mid-event, or bytes to come that continue one."""
        return bool(self._buf or self._data) or self._event is not None

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                events.append(SSEEvent(b"\n".join(self._data), self._event, self._id))
            self._data = []
            self._event = None
            return
        if line[:1] == b":":
            return  # a comment (keepalive)
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            self._id = value.decode("utf-8", "replace")
        # `retry` and unknown fields mean nothing to a relay
