"""A stream's sink: the broker's messages as SSE frames, written straight to the socket when the
connection allows it (see direct.py), otherwise queued for the stream's ASGI `send`."""

from __future__ import annotations

import asyncio
from functools import lru_cache

from dashboard.events import Message, encode_comment, encode_frame, encode_retry
from dashboard.web.direct import Writer, http_chunk

KEEPALIVE = encode_comment("keepalive")
KEEPALIVE_CHUNK = http_chunk(KEEPALIVE)


def wire(message: Message) -> tuple[bytes, bytes, bytes, bytes]:
    """A message's SSE frames, for single-topic and multiplexed streams, as is and as HTTP chunks.

    Encoded on the first delivery and kept on the message: once per event, not per subscriber.
    On a multiplexed stream `event:` is the topic, or `topic:type` for a typed event.
    """
    frames = message.wire
    if frames is None:
        kind = message.event
        mux_name = message.topic if kind == "message" else f"{message.topic}:{kind}"
        frame = encode_frame(message.data, kind, message.id)
        mux_frame = encode_frame(message.data, mux_name, message.id)
        frames = message.wire = (frame, mux_frame, http_chunk(frame), http_chunk(mux_frame))
    return frames


@lru_cache(maxsize=1024)
def notice_frames(topic: str, event: str, data: str, mux: bool) -> tuple[bytes, bytes]:
    """A frame with no id (presence counts) and its HTTP chunk: built once for every stream told."""
    frame = encode_frame(data, f"{topic}:{event}" if mux else event)
    return frame, http_chunk(frame)


class StreamSink:
    """One stream's bounded backlog of SSE frames, and the waiter to wake when it has some.

    When the stream has a direct `writer` and nothing is waiting or being sent, a frame goes
    straight to the socket (no task switch per subscriber); otherwise it waits in the backlog and
    the stream sends all waiting frames in one write. A sink whose backlog passes `max_backlog`
    refuses the next message: the broker cuts it off (it can resume with Last-Event-ID), so that
    it never delays the publisher or anyone else.
    """

    __slots__ = (
        "_pending",
        "_waiter",
        "closed",
        "max_backlog",
        "missed",
        "mux",
        "sending",
        "writer",
        "wrote",
    )

    def __init__(self, *, mux: bool = False, max_backlog: int = 1024) -> None:
        self.mux = mux
        self.max_backlog = max_backlog
        self.missed = 0
        self.closed = False
        self._pending: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self.writer: Writer | None = None  # set by the stream once the response has started
        self.sending = False  # the stream is inside a send: a direct write would overtake it
        self.wrote = False  # something was written since the last heartbeat tick

    def put(self, message: Message) -> bool:
        frames = message.wire or wire(message)
        writer = self.writer
        if writer is not None and not self._pending and not self.sending and writer(frames[2 + self.mux]):
            self.wrote = True
            return True
        if len(self._pending) >= self.max_backlog:
            # Cut off: it misses the events it had waiting and this one (keepalives aside).
            self.missed = 1 + sum(frame.startswith(b"id: ") for frame in self._pending)
            self._pending.clear()
            return False
        self._pending.append(frames[self.mux])
        self._wake()
        return True

    def replay(self, messages: list[Message]) -> None:
        self._pending.extend(wire(message)[self.mux] for message in messages)
        self._wake()

    def notice(self, topic: str, event: str, data: str) -> None:
        self.put_frame(*notice_frames(topic, event, data, self.mux))

    def keepalive(self) -> None:
        self.put_frame(KEEPALIVE, KEEPALIVE_CHUNK)

    def put_frame(self, frame: bytes, chunk: bytes) -> None:
        """Send a frame that is no event: directly when possible, else queued."""
        writer = self.writer
        if writer is not None and not self._pending and not self.sending and writer(chunk):
            self.wrote = True
        elif len(self._pending) >= self.max_backlog:
            self._pending.clear()  # a reader stalled even for keepalives
            self.close()
        else:
            self._pending.append(frame)
            self._wake()

    def close(self, retry_ms: int | None = None) -> None:
        if retry_ms is not None and not self.closed:
            frame = encode_retry(retry_ms)
            self.put_frame(frame, http_chunk(frame))
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self) -> bytes | None:
        """All waiting frames as one chunk, or None when none wait."""
        if not self._pending:
            return None
        chunk = b"".join(self._pending)
        self._pending.clear()
        self.wrote = True
        return chunk

    def wait(self) -> asyncio.Future[None]:
        """Done once frames wait or the sink is closed (a future: no coroutine frame per stream)."""
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        if self._pending or self.closed:
            waiter.set_result(None)
        return waiter

    async def next_chunk(self) -> bytes | None:
        """All waiting frames as one chunk, once there are some; None once closed."""
        while not self._pending and not self.closed:
            await self.wait()
        return self.take()
