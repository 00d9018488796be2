"""Bounded connections: a request head must arrive within server.header_timeout (half-open and
slowloris connections are closed, an open stream is not), an idle keep-alive connection closes,
and one client holds at most server.max_streams_per_client streams (429 past it)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter

import httpx
import pytest
from starlette.requests import Request

from dashboard.auth import Access
from dashboard.config import parse_config
from dashboard.errors import BrokerError
from dashboard.runtime import Runtime
from dashboard.web.sse import Streams
from tests.support import open_streams, raise_open_files_limit, read_events, run_async, sse_stream, wait_for

HALF_OPEN = 3000
PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: "
TICKING = 'topics:\n  t: {feed: "tests.scale_feed:Counter", options: {interval: 0.05}, public: true}\n'
MARGIN = 5.0  # seconds a close may come after its deadline on a busy machine


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> float | None:
    """When the server closed the connection (read until end of file), or None if it did not."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return None
    except OSError:
        pass  # reset: closed too
    return time.monotonic()


async def next_event_id(reader: asyncio.StreamReader, timeout: float = 10.0) -> int:
    """The id of the next event on a raw stream."""
    buffer = b""
    async with asyncio.timeout(timeout):
        while not (found := re.search(rb"\nid: (\d+)\n", buffer)):
            chunk = await reader.read(65536)
            assert chunk, f"the stream ended: {buffer[-300:]!r}"
            buffer += chunk
    return int(found[1])


async def get(port: int, path: str, reader=None, writer=None) -> tuple[bytes, float]:
    """A plain GET on a new (or the given) connection: the response head, and when it was read."""
    if reader is None:
        reader, writer = await connect(port)
    writer.write(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path.encode())
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        await reader.readexactly(int(length[1]) if length else 0)
    return head, time.monotonic()


def test_thousands_of_half_open_heads_are_closed_while_other_clients_are_served(serve):
    server = serve("server: {header_timeout: 1}\n" + TICKING, open_files=HALF_OPEN + 1000)
    raise_open_files_limit(HALF_OPEN + 200)

    async def half_open(opened: list[float]) -> tuple[float, float, float | None]:
        """When it began to connect, when its partial head was sent, and when the server closed it."""
        began = time.monotonic()  # the server's deadline runs from later: its accept, or the first byte
        reader, writer = await connect(server.port)
        writer.write(PARTIAL_HEAD)
        sent = time.monotonic()
        opened.append(began)
        closed = await closed_by_server(reader, timeout=30)
        writer.close()
        return began, sent, closed

    async def scenario():
        # A stream opened before them, with a whole request pipelined behind it (which pauses reading).
        stream_reader, stream_writer = await connect(server.port)
        stream_writer.write(b"GET /sse/t?replay=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 2)
        first_id = await next_event_id(stream_reader)
        stream_opened = time.monotonic()
        opened: list[float] = []
        flood = asyncio.gather(*(half_open(opened) for _ in range(HALF_OPEN)))
        async with asyncio.timeout(60):
            while len(opened) < HALF_OPEN:
                await asyncio.sleep(0.01)
        # While they are open, another client is served: a plain request, and a new stream.
        head, answered = await get(server.port, "/healthz")
        still_open = sum(1 for began in opened if answered - began < 0.9)  # their deadline not reached
        reader, writer = await connect(server.port)
        writer.write(b"GET /sse/t HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await next_event_id(reader)
        writer.close()
        ends = await flood
        # The stream opened before the flood lives on past the header timeout (1 s): read an event
        # from it once 1.5 s have passed, however fast the flood came and went.
        await asyncio.sleep(max(0.0, 1.5 - (time.monotonic() - stream_opened)))
        later_id = await next_event_id(stream_reader)
        lived = time.monotonic() - stream_opened
        stream_writer.close()
        return head, still_open, ends, first_id, later_id, lived

    head, still_open, ends, first_id, later_id, lived = run_async(scenario(), timeout=120)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert still_open >= 100, f"/healthz answered when only {still_open} half-open connections were open"
    open_after = [sent for _, sent, closed in ends if closed is None]
    assert not open_after, f"{len(open_after)} of {HALF_OPEN} half-open connections were not closed"
    earliest = min(closed - began for began, _, closed in ends)
    latest = max(closed - sent for _, sent, closed in ends)
    assert earliest > 0.9 and latest < 1 + MARGIN, f"closed {earliest:.2f}s to {latest:.2f}s after"
    print(f"{still_open} half-open connections were open when /healthz answered")
    assert later_id > first_id and lived > 1.5, (first_id, later_id, lived)
    assert "Traceback" not in server.output(), server.output()[-3000:]


def test_a_silent_connection_a_slowloris_and_an_idle_keep_alive_connection_are_closed_in_time(serve):
    server = serve("server: {header_timeout: 1}\ntopics: {}\n")

    async def silent() -> float | None:
        start = time.monotonic()
        reader, writer = await connect(server.port)
        closed = await closed_by_server(reader, timeout=10 + MARGIN)
        writer.close()
        return None if closed is None else closed - start

    async def slowloris() -> tuple[float | None, int]:
        """One byte every 0.3 s: each arrives well within the timeout, the head never completes."""
        reader, writer = await connect(server.port)
        head = PARTIAL_HEAD + b"a" * 100
        sent = 0

        async def trickle() -> None:
            nonlocal sent
            with contextlib.suppress(OSError):
                for byte in head:
                    writer.write(bytes([byte]))
                    sent += 1
                    await writer.drain()
                    await asyncio.sleep(0.3)  # on purpose: the pace of the attack

        start = time.monotonic()
        trickling = asyncio.create_task(trickle())
        closed = await closed_by_server(reader, timeout=10 + MARGIN)
        trickling.cancel()
        writer.close()
        return (None if closed is None else closed - start), sent

    async def next_head_of_a_keep_alive_connection() -> float | None:
        """The deadline of a later head on a connection runs from that head's first byte."""
        reader, writer = await connect(server.port)
        head, _ = await get(server.port, "/healthz", reader, writer)
        assert head.startswith(b"HTTP/1.1 200"), head
        await asyncio.sleep(2)  # on purpose: longer than the header timeout, shorter than keep-alive
        start = time.monotonic()
        writer.write(PARTIAL_HEAD)
        closed = await closed_by_server(reader, timeout=10 + MARGIN)
        writer.close()
        return None if closed is None else closed - start

    async def idle_after_a_request() -> float | None:
        reader, writer = await connect(server.port)
        head, answered = await get(server.port, "/healthz", reader, writer)
        assert head.startswith(b"HTTP/1.1 200"), head
        closed = await closed_by_server(reader, timeout=10 + MARGIN)
        writer.close()
        return None if closed is None else closed - answered

    async def scenario():
        return await asyncio.gather(
            silent(), slowloris(), next_head_of_a_keep_alive_connection(), idle_after_a_request()
        )

    silent_took, (slowloris_took, trickled), next_head_took, idle_took = run_async(scenario())
    assert silent_took is not None and 0.9 < silent_took < 1 + MARGIN, f"silent: closed after {silent_took}"
    assert slowloris_took is not None, "the slowloris was never closed"
    assert 0.9 < slowloris_took < 1 + MARGIN, f"slowloris: closed after {slowloris_took:.2f}s"
    assert trickled >= 3, f"only {trickled} bytes were trickled before the close"
    assert next_head_took is not None and 0.9 < next_head_took < 1 + MARGIN, next_head_took
    # uvicorn's keep-alive timeout (5 s) closes a connection idle after its response.
    assert idle_took is not None and 4.5 < idle_took < 5 + MARGIN, f"idle: closed after {idle_took}"
    assert "limits: request heads within 1s, idle connections closed after 5s" in server.output()


# -- streams per client ----------------------------------------------------------------------
CAPPED = (
    "server: {max_streams_per_client: 3}\n"
    "auth:\n  viewers: {proxy_header: X-User, trusted_proxies: [127.0.0.1]}\n" + TICKING
)


def answer(client: httpx.Client, path: str, **kwargs) -> httpx.Response:
    """The response to a GET, read whole unless it is a stream (then closed at once)."""
    with client.stream("GET", path, **kwargs) as response:
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.read()
    return response


def open_count(client: httpx.Client) -> int:
    return client.get("/healthz").json()["streams"]["open"]


def test_a_client_past_max_streams_per_client_gets_429_while_others_are_served(serve):
    server = serve(CAPPED)
    with server.client() as client, contextlib.ExitStack() as rest:
        first = contextlib.ExitStack()
        first.enter_context(sse_stream(client, "/sse/t"))
        for path in ("/sse?topic=t", "/sse/t"):
            rest.enter_context(sse_stream(client, path))
        for path in ("/sse/t", "/sse?topic=t"):
            refused = answer(client, path)
            assert refused.status_code == 429, (path, refused.status_code, refused.headers)
            error = refused.json()["error"]
            assert error["code"] == "too_many_streams" and "3 streams" in error["message"], error
            assert int(refused.headers["retry-after"]) > 0, refused.headers
        assert client.get("/healthz").json()["streams"]["per_client"] == 3
        assert "closed after 5s, 3 streams per client" in server.output()
        # Another address is served; so is another client named by the trusted proxy (127.0.0.1).
        other = httpx.HTTPTransport(local_address="127.0.0.2")
        with server.client(transport=other) as elsewhere:
            assert read_events(elsewhere, "/sse/t", 1)
        forwarded = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9"}
        assert read_events(client, "/sse/t", 1, headers=forwarded)
        # Closing one of its streams gives the client its place back.
        first.close()
        wait_for("the closed stream to be counted out", lambda: open_count(client) == 2)
        with sse_stream(client, "/sse/t") as events:
            assert next(iter(events)).id
    assert "Traceback" not in server.output(), server.output()[-3000:]


def test_streams_opened_and_closed_many_times_leave_exactly_the_cap(serve):
    server = serve(CAPPED)
    paths = ["/sse/t", "/sse?topic=t"] * 3

    def statuses() -> Counter:
        starts, _ = run_async(open_streams([(server.url, path, None) for path in paths], timeout=30))
        assert all(s.retry_after for s in starts if s.status == 429), starts
        return Counter(s.status for s in starts)

    async def leave_at_once(count: int) -> None:
        """Clients that ask for a stream and leave before its answer."""
        for _ in range(count):
            _, writer = await connect(server.port)
            writer.write(b"GET /sse/t HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await writer.drain()
            writer.close()

    with server.client() as client:
        for _ in range(10):
            assert statuses() == {200: 3, 429: 3}
            run_async(leave_at_once(20))
            wait_for("every stream to be counted out", lambda: open_count(client) == 0)
        assert statuses() == {200: 3, 429: 3}, "the count leaked"


def test_a_stream_whose_subscription_fails_gives_its_place_back():
    runtime = Runtime(parse_config("server: {max_streams_per_client: 1}\n" + TICKING))

    async def failing(*args, **kwargs):
        raise BrokerError("the broker is down")

    runtime.broker.subscribe = failing  # type: ignore[method-assign]
    streams = Streams(
        runtime.broker, runtime.access, runtime.admission, runtime.heartbeat, runtime.config.server
    )
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/sse/t",
        "query_string": b"",
        "headers": [],
        "client": ("192.0.2.1", 4000),
    }

    async def attempts() -> None:
        for _ in range(3):  # the cap is 1: a leaked place would make the second a 429
            with pytest.raises(BrokerError):
                await streams.open(Request(scope), ["t"], mux=False)

    run_async(attempts())
    assert runtime.admission.open == 0 and runtime.admission.clients == {}


def test_the_client_behind_a_trusted_proxy_is_the_right_most_untrusted_forwarded_address():
    config = "auth:\n  viewers: {proxy_header: X-User, trusted_proxies: [10.0.0.0/8, 127.0.0.1]}\n"
    access = Access(parse_config(config + "topics: {}\n"))

    def client(peer: str, *forwarded: str, access: Access = access) -> str:
        headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
        return access.client_address({"client": (peer, 5000), "headers": headers})

    assert client("192.0.2.1", "203.0.113.9") == "192.0.2.1", "an untrusted peer's header was read"
    assert client("127.0.0.1") == "127.0.0.1"  # a proxy that names nobody
    assert client("127.0.0.1", "203.0.113.9") == "203.0.113.9"
    assert client("10.0.0.5", "198.51.100.7, 203.0.113.9, 10.1.1.1") == "203.0.113.9"
    assert client("127.0.0.1", "198.51.100.7", "203.0.113.9") == "203.0.113.9"  # two headers: one list
    assert client("127.0.0.1", "10.2.2.2, 10.1.1.1") == "10.2.2.2"  # all trusted: the furthest
    assert client("127.0.0.1", "203.0.113.9, unknown") == "127.0.0.1"  # not an address: not read past
    assert client("127.0.0.1", "[2001:db8::1]:443") == "2001:db8::1"
    no_proxies = Access(parse_config("topics: {}\n"))
    assert client("127.0.0.1", "203.0.113.9", access=no_proxies) == "127.0.0.1"
