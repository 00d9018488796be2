"""The fast path: HTTP chunks written straight to the client's socket under uvicorn's httptools
protocol, past the ASGI `send` (and so past every middleware's wrapper of it); and the client's
leaving noticed without a task per connection waiting on `receive` for it.

It uses attributes uvicorn does not document (`transport`, `flow.write_paused`, `disconnected`,
`chunked_encoding`, `message_event`, `response_complete`, `more_body` of httptools_impl's
RequestResponseCycle, and `resume_reading` of its FlowControl).
pyproject.toml pins uvicorn to the releases tested; `fast_path_problem()` checks them at startup (logged), and
tests/test_stream_paths.py fails when the real server does not take this path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from starlette.types import Receive, Scope

log = logging.getLogger("dashboard.sse")

RAW_SEND = "dashboard.raw_send"  # the server's own `send`, kept in the scope by DashboardApp
_HTTPTOOLS = "uvicorn.protocols.http.httptools_impl"
_CYCLE_ATTRIBUTES = (
    "transport",
    "flow",
    "disconnected",
    "chunked_encoding",
    "message_event",
    "response_complete",
    "more_body",
)


def http_chunk(data: bytes) -> bytes:
    """`data` framed as one HTTP/1.1 chunk (what a direct write puts on the socket)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def direct_writer(scope: Scope, *, body_read: bool = False) -> Writer | None:
    """A function writing HTTP chunks straight to the client's socket, when the server allows it.

    Under uvicorn's httptools protocol, the publisher can then put a frame on each subscriber's
    socket itself instead of waking one task per subscriber: that is most of the cost of fan-out
    (and the relay puts each batch of chunks there without the middleware's `send` wrappers).
    It honours the protocol's flow control (returns False while writing is paused, and the frame
    then goes through the ordinary ASGI `send`). Anywhere else: None, and ASGI `send` is used.
    Call it once per connection, after the response has started; `body_read`: the request was not
    a GET, but its body has been read in full.
    """
    cycle = _cycle(scope)
    if scope.get("method") != "GET" and not body_read:
        return None
    if getattr(cycle, "chunked_encoding", None) is not True:
        return None
    return Writer(cycle)


class Writer:
    """Called with one HTTP chunk: writes it now, or returns False (paused, gone)."""

    __slots__ = ("cycle", "flow", "transport")

    def __init__(self, cycle: Any) -> None:
        self.cycle, self.transport, self.flow = cycle, cycle.transport, cycle.flow

    def __call__(self, chunk: bytes) -> bool:
        cycle = self.cycle
        if cycle.disconnected or self.flow.write_paused:
            return False
        if self.transport.is_closing():
            # The client left, but uvicorn told a request it had pipelined behind this one (it tells
            # the newest only): tell this one, as uvicorn would have, so that it ends.
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
            return False
        self.transport.write(chunk)
        return True

    def chunk(self, data: bytes) -> bool:
        """`data` framed as one HTTP chunk and written (see http_chunk), or False as above."""
        cycle = self.cycle
        if cycle.disconnected or self.flow.write_paused or self.transport.is_closing():
            return self(b"")  # as above, without a write
        self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        return True


def on_hangup(scope: Scope, callback: Callable[[], None]) -> bool:
    """Have `callback` called once the client leaves, when the server allows it (else False: then
    wait on `receive` for `http.disconnect` as usual). Call it once the request body is read.

    Under uvicorn's httptools protocol, the cycle's `message_event` is then set only when the
    response completes or the connection is lost; it is replaced by one that also calls
    `callback` in the second case. This spares each stream a task parked in `receive()`.
    """
    cycle = _cycle(scope)
    if cycle is None or cycle.more_body:  # a body still arriving is for `receive` to read
        return False
    if cycle.disconnected:
        callback()
    else:
        cycle.message_event = _Hangup(cycle, callback)
        cycle.flow.resume_reading()  # as `receive` would: a large body may have paused reading
    return True


def watch_hangup(scope: Scope, receive: Receive, callback: Callable[[], None]) -> asyncio.Task[None] | None:
    """Have `callback` called once the client leaves: told by the server (`on_hangup`) when it
    allows it, else by a task waiting on `receive` for `http.disconnect`, returned for the caller
    to cancel once the response is over. Call it once the request body is read."""
    if on_hangup(scope, callback):
        return None
    return asyncio.create_task(_disconnected(receive, callback))


async def _disconnected(receive: Receive, callback: Callable[[], None]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    callback()


class LeanEvent:
    """asyncio.Event's verbs without its deque of waiters, which holds a block of 64 slots even
    when empty (most of a kilobyte per idle connection): a list is made when someone waits."""

    __slots__ = ("flag", "waiters")

    def __init__(self, flag: bool = False) -> None:
        self.flag = flag
        self.waiters: list[asyncio.Future[bool]] | None = None

    def is_set(self) -> bool:
        return self.flag

    def set(self) -> None:
        self.flag = True
        for waiter in self.waiters or ():
            if not waiter.done():
                waiter.set_result(True)

    def clear(self) -> None:
        self.flag = False

    async def wait(self) -> bool:
        if not self.flag:
            waiter = asyncio.get_running_loop().create_future()
            if self.waiters is None:
                self.waiters = []
            self.waiters.append(waiter)
            try:
                await waiter
            finally:
                self.waiters.remove(waiter)
        return True


class _Hangup(LeanEvent):
    """The cycle's `message_event`, which also calls `callback` once when the client left."""

    __slots__ = ("callback", "cycle")

    def __init__(self, cycle: Any, callback: Callable[[], None]) -> None:
        super().__init__()
        self.cycle: Any = cycle
        self.callback: Callable[[], None] | None = callback

    def set(self) -> None:
        super().set()
        cycle, callback = self.cycle, self.callback
        if cycle is not None and (cycle.disconnected or cycle.response_complete):
            self.cycle = self.callback = None  # the end: no reference cycle left for the collector
            if cycle.disconnected and callback is not None:
                callback()


def _cycle(scope: Scope) -> Any:
    """uvicorn's httptools RequestResponseCycle serving `scope`, or None under anything else."""
    cycle = getattr(scope.get(RAW_SEND), "__self__", None)
    return cycle if type(cycle).__module__ == _HTTPTOOLS else None


def fast_path_problem() -> str | None:
    """Why streams cannot write straight to sockets under the installed uvicorn; None when they can."""
    try:
        from uvicorn.protocols.http import httptools_impl
    except ImportError as exc:
        return f"uvicorn's httptools protocol cannot be imported ({exc})"
    assigned = set(httptools_impl.RequestResponseCycle.__init__.__code__.co_names)
    missing = [name for name in _CYCLE_ATTRIBUTES if name not in assigned]
    if missing:
        return f"this uvicorn's RequestResponseCycle lacks {', '.join(missing)}"
    flow = httptools_impl.FlowControl
    if "write_paused" not in flow.__init__.__code__.co_names or not hasattr(flow, "resume_reading"):
        return "this uvicorn's FlowControl lacks write_paused or resume_reading"
    return None


def log_fast_path() -> None:
    """The startup line saying how streams are written."""
    import uvicorn

    problem = fast_path_problem()
    if problem is None:
        log.info("streams write straight to sockets (uvicorn %s, httptools)", uvicorn.__version__)
    else:
        log.warning("streams write through ASGI send, the slower path: %s", problem)
