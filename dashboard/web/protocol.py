"""Bounded connections: uvicorn's httptools protocol with a deadline on each request head, so that
a client that connects and sends nothing, or trickles a head a byte at a time (slowloris), cannot
hold a connection for ever (nginx's client_header_timeout, Go's ReadHeaderTimeout).

uvicorn arms its one timer (`timeout_keep_alive`) only once a response is complete; before the
first request, and while a head arrives, nothing bounds the wait. The subclass keeps uvicorn's
RequestResponseCycle, so streams still take the fast path (see direct.py). It also holds two
queues uvicorn makes per connection in leaner objects (a list, a LeanEvent): idle streams are
mostly such per-connection objects.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from dashboard.web.direct import LeanEvent

KEEP_ALIVE_TIMEOUT = 5  # seconds an idle connection stays open after a response (uvicorn's setting)


class Pipeline(list):
    """uvicorn's queue of pipelined requests as a list: an empty deque holds a block of 64 slots,
    most of a kilobyte per idle connection (uvicorn appends on the left and pops on the right)."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


class HeadTimeoutProtocol(HttpToolsProtocol):
    """Closes the connection when a request head is not complete `header_timeout` seconds after the
    connection was made (the first head) or after its first byte (a later one). The deadline is not
    moved by each byte that arrives, and it is off while a response is under way: a stream lives on."""

    # Slots: three more keys in the instance dict would take it past what CPython shares between
    # instances (30 keys), which costs over a kilobyte per connection.
    __slots__ = ("head_begun", "head_timer", "header_timeout")

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if type(self.pipeline) is deque:  # requests pipelined behind the one under way
            self.pipeline = Pipeline()
        self.header_timeout = header_timeout
        self.head_timer: asyncio.TimerHandle | None = None
        self.head_begun = False  # the deadline of the head under way runs from its first byte

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        writable = getattr(self.flow, "_is_writable_event", None)  # what a response's writes wait on
        if type(writable) is asyncio.Event:
            self.flow._is_writable_event = LeanEvent(writable.is_set())
        self._arm()
        self.head_begun = True  # the first head's deadline runs from the connection, as Go's does

    def data_received(self, data: bytes) -> None:
        if not self.head_begun and (self.cycle is None or self.cycle.response_complete):
            self.head_begun = True  # the first byte of a head, on a new or an idle keep-alive connection
            self._arm()
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self.head_begun:  # a head pipelined behind a response under way
            self.head_begun = True
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self.head_begun = False
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self.head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            # Reading is paused behind a request under way (pipelining): the rest of this head may be
            # waiting unread in the socket, through no fault of the client. Look again later.
            self._arm()
            return
        self.transport.close()


def http_protocol(header_timeout: float) -> Callable[..., HeadTimeoutProtocol]:
    """What `uvicorn.Config(http=...)` takes to serve with this protocol (a partial pickles, so the
    worker processes of `serve --workers` get it too)."""
    return functools.partial(HeadTimeoutProtocol, header_timeout=header_timeout)
