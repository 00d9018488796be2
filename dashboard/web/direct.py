"""The fast path: HTTP chunks written straight to the client's socket under uvicorn's httptools
protocol, past the ASGI `send` (and so past every middleware's wrapper of it).

It reads attributes uvicorn does not document (`transport`, `flow.write_paused`, `disconnected`,
`chunked_encoding` of httptools_impl's RequestResponseCycle). pyproject.toml pins uvicorn to the
releases tested; `fast_path_problem()` checks them at startup (logged), and
tests/test_stream_paths.py fails when the real server does not take this path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.types import Scope

log = logging.getLogger("dashboard.sse")

RAW_SEND = "dashboard.raw_send"  # the server's own `send`, kept in the scope by DashboardApp
_HTTPTOOLS = "uvicorn.protocols.http.httptools_impl"
_CYCLE_ATTRIBUTES = ("transport", "flow", "disconnected", "chunked_encoding")

Writer = Callable[[bytes], bool]  # writes one HTTP chunk now, or returns False (paused, gone)


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
    cycle = getattr(scope.get(RAW_SEND), "__self__", None)
    if (
        (scope.get("method") != "GET" and not body_read)
        or type(cycle).__module__ != _HTTPTOOLS
        or getattr(cycle, "chunked_encoding", None) is not True
    ):
        return None
    transport, flow = cycle.transport, cycle.flow

    def write(chunk: bytes) -> bool:
        if cycle.disconnected or flow.write_paused:
            return False
        transport.write(chunk)
        return True

    return write


def fast_path_problem() -> str | None:
    """Why streams cannot write straight to sockets under the installed uvicorn; None when they can."""
    try:
        from uvicorn.protocols.http import httptools_impl
    except ImportError as exc:
        return f"uvicorn's httptools protocol cannot be imported ({exc})"
    assigned = set(httptools_impl.RequestResponseCycle.__init__.__code__.co_names)
    missing = [name for name in _CYCLE_ATTRIBUTES if name not in assigned]
    if missing or "write_paused" not in httptools_impl.FlowControl.__init__.__code__.co_names:
        return f"this uvicorn's RequestResponseCycle lacks {', '.join(missing) or 'flow.write_paused'}"
    return None


def log_fast_path() -> None:
    """The startup line saying how streams are written."""
    import uvicorn

    problem = fast_path_problem()
    if problem is None:
        log.info("streams write straight to sockets (uvicorn %s, httptools)", uvicorn.__version__)
    else:
        log.warning("streams write through ASGI send, the slower path: %s", problem)
