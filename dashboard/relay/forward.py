"""Same-dialect streams: plain events go to the client as the provider's own bytes, straight from the
upstream connection's callback.

When the client speaks the provider's dialect, most events are tokens that the client is sent as
they are and the relay needs nothing from (no usage, finish or error). `Forward` finds event
boundaries on the bytes as they arrive, asks the dialect whether every whole event among them is
such a plain one (`Dialect.plain_events`, a few searches of the bytes), and writes them on: no task
wakes, nothing is decoded or re-framed. Anything else stops it and goes to the stream's reader, which
parses it the ordinary way (stream.py): an event to parse, a line end other than LF, bytes that are
not UTF-8 or hold a secret to redact, a client that cannot take more now.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from dashboard.relay.dialects import Dialect
from dashboard.relay.metrics import Measure, now

MAX_HELD = 1 << 16  # a part of an event held this long goes to the reader instead
# Single bytes as ints: `34 in data` is a memchr, where `b'"' in data` costs ten times more per call
# (the bytes argument goes through the buffer protocol), on a path taken for every event.
CR, LF, QUOTE = ord("\r"), ord("\n"), ord('"')

Write = Callable[[bytes], bool]  # writes bytes to the client now, or returns False (paused, gone)


class Forward:
    """A `transport.Sink` writing a same-dialect stream's plain events to the client."""

    __slots__ = ("clock", "held", "key", "last", "measure", "plain", "secrets", "shape", "write")

    def __init__(self, write: Write, dialect: Dialect, secrets: list[bytes], measure: Measure) -> None:
        self.write = write
        self.plain = dialect.plain_events
        self.key = dialect.plain_text_key
        self.shape: tuple[bytes, bytes] | None = None  # a plain event's bytes around its text
        self.secrets = secrets
        self.measure = measure
        self.held = b""  # the start of an event whose end has not arrived
        self.clock = asyncio.get_running_loop().time
        self.last = self.clock()  # when bytes last arrived: the idle timeout counts from there

    def feed(self, data: bytes) -> bytes | None:
        held = self.held
        buf = held + data if held else data
        self.last = self.clock()
        if CR in data:
            self.held = b""
            return buf
        if buf[-2:] == b"\n\n":
            end = len(buf)
            events = buf
        else:
            end = buf.rfind(b"\n\n") + 2
            if end == 1:  # no event ends here yet
                if len(buf) > MAX_HELD:
                    self.held = b""
                    return buf
                self.held = buf
                return None
            events = buf[:end]
        # An event that differs from the last plain one the dialect checked only in its text, a text
        # that can end neither its JSON string nor its line (no quote, no line end, no trailing
        # backslash), is plain too: two comparisons instead of the dialect's dozen searches. A
        # provider writes every token of a stream the same way but for the text, so this is the
        # common case. (Inline, as the ASCII check below: this runs for every event.)
        plain = None
        if (shape := self.shape) is not None:
            prefix, suffix = shape
            if (
                events.startswith(prefix)
                and events.endswith(suffix)
                and len(events) >= len(prefix) + len(suffix)
            ):
                text = events[len(prefix) : len(events) - len(suffix)]
                if QUOTE not in text and LF not in text and text[-1:] != b"\\":
                    plain = (1 if text else 0), len(text)
        if plain is None:
            plain = self._plain(events)
        if (
            plain is None
            or not ((events.isascii() and not self.secrets) or self._clean(events))  # ASCII: UTF-8
            or not self.write(events)
        ):
            self.held = b""
            return buf
        self.held = buf[end:] if end < len(buf) else b""
        tokens, chars = plain
        measure = self.measure
        measure.text_chars += chars
        if tokens:
            measure.text_chunks += tokens
            if measure.first_token_out is None:
                measure.first_token_out = now()
        return None

    def _plain(self, events: bytes) -> tuple[int, int] | None:
        """Several events of the learnt shape (read together when the relay fell behind, which is
        when its CPU counts most), else the dialect's own check; a single plain event with text
        teaches its shape."""
        if self.shape is not None and (plain := self._shaped(events)) is not None:
            return plain
        plain = self.plain(events)
        if plain is not None and plain[0] == 1 and self.key and events.count(b"\n\n") == 1:
            start = events.find(self.key) + len(self.key)
            end = start + plain[1]
            if start >= len(self.key) and events[end : end + 1] == b'"':
                self.shape = events[:start], events[end:]
        return plain

    def _shaped(self, events: bytes) -> tuple[int, int] | None:
        """(tokens, chars) of `events` when each is of the learnt shape (the check `feed` makes of
        one event, made of each), else None."""
        assert self.shape is not None
        prefix, suffix = self.shape
        after = suffix[:-2]  # the bytes after the text, less the blank line that ends the event
        least = len(prefix) + len(after)
        tokens = chars = 0
        *whole, after_last = events.split(b"\n\n")
        if after_last:  # a line end after the last event's blank line: not the shape's
            return None
        for event in whole:
            if not (event.startswith(prefix) and event.endswith(after) and len(event) >= least):
                return None
            text = event[len(prefix) : len(event) - len(after)]
            if QUOTE in text or LF in text or text[-1:] == b"\\":
                return None
            tokens += 1 if text else 0
            chars += len(text)
        return tokens, chars

    def _clean(self, events: bytes) -> bool:
        """Whether `events` can go out as they are: UTF-8, with no secret in them to redact."""
        for secret in self.secrets:
            if secret in events:
                return False
        if not events.isascii():
            try:
                events.decode()
            except UnicodeDecodeError:
                return False
        return True

    def give_back(self) -> bytes:
        held, self.held = self.held, b""
        return held
