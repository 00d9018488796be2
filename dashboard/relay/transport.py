"""The relay's HTTP/1.1 client: an httpx transport in which each connection is an asyncio protocol
fed to httptools, and idle keep-alive connections wait in a list per origin.

httpx's own pool (httpcore) scans every connection on each request and on each close: with a few
hundred concurrent streams the relay spent most of its CPU there, and streams waited seconds for
their first token. Here a request takes the newest idle connection or opens one, and a body read
hands over everything that arrived since the last read (chunks that came together, together).
"""

from __future__ import annotations

import asyncio
import socket
import time
import types
from collections.abc import AsyncIterator
from typing import Protocol

import httptools
import httpx

KEEPALIVE_EXPIRY = 30.0  # seconds an idle connection is kept for the next request
MAX_IDLE = 1000  # idle connections kept per origin
_HIGH_WATER = 1 << 20  # buffered body bytes at which reading from the socket pauses


Origin = tuple[str, str, int]  # scheme, host, port


def origin_of(url: httpx.URL) -> Origin:
    return (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))


def request_head(method: str, url: httpx.URL, headers: dict[str, str]) -> bytes:
    """A request's head as httpx writes it (Host first), up to the Content-Length that ends it: the
    hot path adds `Content-Length: N` and the body to it (see `exchange`)."""
    request = httpx.Request(method, url, headers=headers)
    lines = [b"%s %s HTTP/1.1\r\n" % (method.encode(), url.raw_path)]
    lines += [b"%s: %s\r\n" % (k, v) for k, v in request.headers.raw if k.lower() != b"content-length"]
    return b"".join(lines)


class Sink(Protocol):
    """Takes a response's body as it arrives, in the connection's callback, while a reader waits."""

    def feed(self, data: bytes) -> bytes | None:
        """Take `data`: None when taken (a part may be held, see `held`), else the bytes the reader
        is to have instead (what the sink held and `data`), and the sink is let go."""

    def give_back(self) -> bytes:
        """What the sink holds and has not passed on (a part of an event), given back to the
        reader when it stops waiting; the sink then holds nothing."""


class _Connection(asyncio.Protocol):
    """One connection to an upstream, answering one request at a time."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.gathered: list[bytes] = []  # the body parts of one read (see data_received)
        # httptools takes its callbacks once, here: each body part goes to the list as it is (a call
        # into C, not a Python function, for each part of a stream).
        callbacks = types.SimpleNamespace(
            on_header=self.on_header,
            on_headers_complete=self.on_headers_complete,
            on_body=self.gathered.append,
            on_message_complete=self.on_message_complete,
        )
        self.parser = httptools.HttpResponseParser(callbacks)
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.head: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.body: list[bytes] = []
        self.gathered.clear()
        self.buffered = 0
        self.received = False  # any byte of the answer
        self.complete = False
        self.keep_alive = False
        self.error: httpx.TransportError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.sink: Sink | None = None
        self.paused = False

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.received = True
        error = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            error = exc
        gathered = self.gathered
        if gathered:
            # The body parts of this read, together: to the sink if one is waiting (one write for
            # their events), else or if it lets go to the reader. Inline: this runs for every read.
            body = gathered[0] if len(gathered) == 1 else b"".join(gathered)
            gathered.clear()
            sink = self.sink
            rest = body if sink is None else sink.feed(body)
            if rest is not None:
                self.sink = None  # it stopped (or there is none): the reader takes it from here
                self._keep(rest)
        if error is not None:  # after what came before it was handed on
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP from the server: {error}"))
            self.close()

    def eof_received(self) -> None:
        self.connection_lost(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        if self.complete:
            return
        if self.head.done() and exc is None and self._close_delimited():
            self.on_message_complete()  # the body ran to the end of the connection
        elif exc is not None:
            self._fail(httpx.ReadError(str(exc) or type(exc).__name__))
        else:
            what = "mid-answer" if self.head.done() else "before answering"
            self._fail(httpx.RemoteProtocolError(f"the server closed the connection {what}"))

    # -- httptools callbacks ---------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if not self.head.done():
            self.head.set_result(self.parser.get_status_code())

    def _keep(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # the parser forgets it once past the message
        self._wake()

    # --------------------------------------------------------------------------------------------
    def _close_delimited(self) -> bool:
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def _fail(self, error: httpx.TransportError) -> None:
        if self.error is None:
            self.error = error
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved: nobody may be waiting any more
        self._wake()

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def reusable(self, now: float) -> bool:
        return not self.closed and now - self.idle_since < KEEPALIVE_EXPIRY

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def send(self, message: bytes) -> None:
        """Send a request: its head and body, whole."""
        self._reset()
        assert self.transport is not None
        self.transport.write(message)

    async def read(self, until: float | None = None, sink: Sink | None = None) -> bytes | None:
        """What arrived of the body since the last read, at least a byte; None at its end.
        TimeoutError if nothing arrives by `until` (the loop's time): a timer is set only when
        there is nothing to hand over yet, which under load is rarely. While it waits, what
        arrives goes to `sink` first, if given, and wakes the reader only when the sink lets go."""
        while not self.body:
            if self.error is not None:
                raise self.error
            if self.complete:
                return None
            loop = asyncio.get_running_loop()
            self.waiter = waiter = loop.create_future()
            timer = None if until is None else loop.call_at(until, _expire, waiter)
            self.sink = sink
            try:
                await waiter
            finally:
                self.sink = None
                if timer is not None:
                    timer.cancel()
                if sink is not None and (held := sink.give_back()):
                    self.body.insert(0, held)
                    self.buffered += len(held)
        data = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Body(httpx.AsyncByteStream):
    """A response body read from its connection; closing it hands the connection back."""

    def __init__(self, pool: RelayTransport, connection: _Connection) -> None:
        self.pool = pool
        self.connection: _Connection | None = connection

    async def read(self, until: float | None = None, sink: Sink | None = None) -> bytes | None:
        """The next part of the body (all that arrived since the last read), None at its end;
        `sink`: see `_Connection.read`."""
        if self.connection is None:
            return None
        return await self.connection.read(until, sink)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (data := await self.read()) is not None:
            yield data

    async def aclose(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            self.pool.release(connection)


class RelayTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 to any origin, connections kept alive per origin. Proxy settings in the
    environment are not read: the relay talks to the providers it is configured with."""

    def __init__(self) -> None:
        self.idle: dict[Origin, list[_Connection]] = {}
        self._ssl = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode(), url.raw_path)]
        lines += [b"%s: %s\r\n" % header for header in request.headers.raw]
        lines.append(b"\r\n")
        timeout = (request.extensions.get("timeout") or {}).get("connect")
        return await self.exchange(origin_of(url), b"".join(lines) + request.content, timeout)

    async def exchange(self, origin: Origin, message: bytes, timeout: float | None) -> httpx.Response:
        """Send `message` (a whole request, head and body, as bytes) to `origin` and return the
        response once its head is in: the hot path, which builds no httpx.Request (see
        `request_head`); `timeout`: for connecting, when a new connection is needed."""
        idle = self.idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.reusable(now):
                try:
                    return await self._exchange(connection, message)
                except (httpx.ReadError, httpx.RemoteProtocolError):
                    if connection.received:
                        raise
                    # closed by the server while idle, as we sent: a fresh connection will do
            connection.close()
        connection = await self._connect(origin, timeout)
        return await self._exchange(connection, message)

    async def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        ssl = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            ssl = self._ssl
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(lambda: _Connection(origin), host, port, ssl=ssl)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} within {timeout:g}s") from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from None
        return connection

    async def _exchange(self, connection: _Connection, message: bytes) -> httpx.Response:
        connection.send(message)
        try:
            status = await connection.head
        except BaseException:
            connection.close()
            raise
        return httpx.Response(
            status,
            headers=connection.headers,
            stream=Body(self, connection),
            extensions={"http_version": b"HTTP/1.1"},
        )

    def release(self, connection: _Connection) -> None:
        """A request is over: its connection waits for the next one, or closes if unfinished."""
        if not connection.keep_alive or connection.closed:
            connection.close()
            return
        now = time.monotonic()
        connection.idle_since = now
        idle = self.idle.setdefault(connection.origin, [])
        idle.append(connection)
        while idle and (len(idle) > MAX_IDLE or not idle[0].reusable(now)):
            idle.pop(0).close()

    async def aclose(self) -> None:
        for idle in self.idle.values():
            for connection in idle:
                connection.close()
        self.idle.clear()
