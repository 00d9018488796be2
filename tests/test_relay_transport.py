"""The relay's own HTTP/1.1 client against a real loopback server: a connection is kept alive from
one completion to the next, and one the server closed while it was idle is replaced unseen."""

from __future__ import annotations

import asyncio
import re

import httpx

from dashboard.relay.stream import body_reader
from dashboard.relay.transport import RelayTransport
from tests.support import run_async

EVENT = b'data: {"choices":[]}\n\n'


async def serve(*, close_after_each: bool) -> tuple[asyncio.Server, list[int]]:
    """An upstream answering every request with one event; `requests` counts them per connection.
    With `close_after_each` it closes the connection after each answer without saying so first,
    as servers with a short keep-alive do."""
    requests: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(0)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(int(re.search(rb"(?i)content-length: *(\d+)", head).group(1)))
                requests[-1] += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(EVENT), EVENT)
                )
                await writer.drain()
                if close_after_each:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), requests


async def until_closed(transport: RelayTransport, timeout: float = 5.0) -> None:
    """Wait until every idle connection of `transport` has seen its server close it."""
    pooled = [c for idle in transport.idle.values() for c in idle]
    assert pooled, "the answered connection should wait in the pool"
    async with asyncio.timeout(timeout):
        while not all(c.closed for c in pooled):
            await asyncio.sleep(0.001)


async def completions(close_after_each: bool, count: int) -> tuple[list[bytes], list[int]]:
    server, requests = await serve(close_after_each=close_after_each)
    port = server.sockets[0].getsockname()[1]
    transport = RelayTransport()
    url = httpx.URL(f"http://127.0.0.1:{port}/v1/chat/completions")
    bodies = []
    try:
        for _ in range(count):
            response = await transport.handle_async_request(httpx.Request("POST", url, content=b"{}"))
            read, parts = body_reader(response), []
            while (part := await read(None)) is not None:
                parts.append(part)
            await response.aclose()
            bodies.append(b"".join(parts))
            if close_after_each:  # the server's FIN has reached the connection waiting in the pool
                await until_closed(transport)
    finally:
        await transport.aclose()
        server.close()
        await server.wait_closed()
    return bodies, requests


def test_one_connection_serves_completion_after_completion():
    bodies, requests = run_async(completions(close_after_each=False, count=3))
    assert bodies == [EVENT] * 3
    assert requests == [3], f"requests per upstream connection: {requests}"


def test_a_connection_the_server_closed_while_idle_is_replaced():
    bodies, requests = run_async(completions(close_after_each=True, count=3))
    assert bodies == [EVENT] * 3
    assert requests == [1, 1, 1], f"requests per upstream connection: {requests}"
