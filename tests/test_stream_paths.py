"""Both ways a stream is written: straight to the socket under uvicorn, and plain ASGI `send` elsewhere."""

import asyncio
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from starlette.routing import Route

from dashboard.broker.memory import MemoryBroker
from dashboard.config import parse_config
from dashboard.events import Event
from dashboard.runtime import Runtime
from dashboard.web.admission import Admission
from dashboard.web.app import DashboardApp
from dashboard.web.direct import direct_writer
from dashboard.web.errors import EXCEPTION_HANDLERS
from dashboard.web.gate import HostCheck
from dashboard.web.sink import KEEPALIVE, StreamSink
from dashboard.web.sse import EventStream, Heartbeat
from dashboard.web.telemetry import Telemetry
from tests.support import free_port, sse_stream
from tests.upstream import relay_config


def test_direct_writes_are_only_for_uvicorn_httptools_get_streams():
    assert direct_writer({"method": "GET"}) is None
    assert direct_writer({"method": "GET", "dashboard.raw_send": print}) is None


def test_plain_asgi_send_gets_backlog_live_events_and_keepalives_in_order():
    async def scenario() -> list[dict]:
        broker = MemoryBroker(history=10)
        broker.add_topic("t")
        for n in range(3):
            await broker.publish("t", Event({"n": n}))
        sub = await broker.subscribe(["t"], sink=StreamSink(max_backlog=100))
        heartbeat = Heartbeat(0.05)
        sent: list[dict] = []
        disconnect = asyncio.Event()

        async def receive() -> dict:
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)
            await asyncio.sleep(0)  # a real send may suspend: live events must wait their turn

        admission = Admission(10)
        admission.admit("127.0.0.1")
        stream = EventStream(broker, sub, heartbeat, admission, client="127.0.0.1", retry_ms=100)
        beats = asyncio.create_task(heartbeat.run())
        task = asyncio.create_task(stream({"type": "http", "method": "GET"}, receive, send))
        for n in range(3, 6):
            await broker.publish("t", Event({"n": n}))
            await asyncio.sleep(0)
        async with asyncio.timeout(5):  # idle until a keepalive follows the last event
            while KEEPALIVE not in b"".join(m.get("body", b"") for m in sent).rpartition(b'{"n":5}')[2]:
                await asyncio.sleep(0.01)
        disconnect.set()
        await asyncio.wait_for(task, 5)
        beats.cancel()
        assert not broker.topics["t"].subscribers, "the subscription was not removed"
        assert admission.open == 0 and not admission.clients, "the stream was not counted out"
        return sent

    # A thread of its own: the browser tests' Playwright may hold an event loop in this one.
    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(asyncio.run, scenario()).result(timeout=30)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert body.startswith(b"retry: 100\n\n")
    numbers = [int(part.split(b"}")[0]) for part in body.split(b'data: {"n":')[1:]]
    assert numbers == [0, 1, 2, 3, 4, 5]
    assert KEEPALIVE in body


def test_the_real_server_writes_streams_straight_to_sockets(serve):
    """Fails when a uvicorn release renames what the fast path reads: streams would still work,
    through ASGI `send`, and only a benchmark would notice."""
    server = serve("topics:\n  t: {feed: metrics}\n")
    with server.client() as client:
        with sse_stream(client, "/sse/t") as events:
            next(iter(events))
            metrics = client.get("/metrics").text
        # No task waits on `receive` for the client to leave: uvicorn's own notice must reach the
        # stream, or a stream that left would stay subscribed until its next write fails.
        deadline = time.monotonic() + 10
        while (
            open_streams := client.get("/healthz").json()["streams"]["open"]
        ) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "dashboard_streams_direct 1.0" in metrics, f"the stream is not written directly:\n{metrics}"
    assert "streams write straight to sockets" in server.output(), server.output()
    assert open_streams == 0, "the stream outlived its client"


def raw_request(server, head: bytes) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    connection.sendall(head)
    return connection


def open_streams(client) -> int:
    return client.get("/healthz").json()["streams"]["open"]


def test_a_stream_with_a_request_pipelined_behind_it_ends_when_its_client_leaves(serve):
    """uvicorn tells only the newest pipelined request that the connection closed: the stream
    ahead of it must still end, and no other stream or feed may suffer for it."""
    server = serve("server: {keepalive: 0.3}\ntopics:\n  t: {feed: demo}\n  quiet: {feed: notifications}\n")
    get = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    other = raw_request(server, get % b"/sse/quiet")
    pipelined = raw_request(server, get % b"/sse/t" + get % b"/healthz")
    assert pipelined.recv(1000).startswith(b"HTTP/1.1 200")
    pipelined.close()
    with server.client() as client:
        deadline = time.monotonic() + 10
        while open_streams(client) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert open_streams(client) == 1, "the stream outlived its client"
        assert client.get("/api/topics").json()["topics"]["t"]["status"]["state"] == "running"
    received = b""
    while received.count(b": keepalive") < 3:  # keepalives still reach the other stream
        received += other.recv(4096)
    other.close()
    assert "Traceback" not in server.output(), server.output()


def test_a_relay_client_that_leaves_after_a_large_body_stops_the_upstream(serve, upstream):
    """A body over uvicorn's 64 KiB buffer pauses reading the socket; the relay must still see the
    client go (and stop the upstream request) without a task reading `receive` for it."""
    config = relay_config(upstream.url, free_port(), extra="topics: {}")
    server = serve(config.replace("max_body: 65536", "max_body: 1000000"), env={"RELAY_TEST_KEY": "k"})
    messages = [{"role": "system", "content": "p" * 150_000}, {"role": "user", "content": "hi"}]
    body = json.dumps({"model": "t-slow", "messages": messages}).encode()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    client = raw_request(server, head + body[:-100_000])
    # on purpose: time for the server to read the first part (nothing outside shows it has)
    time.sleep(0.3)
    client.sendall(body[-100_000:])  # the last 100 KB at once: uvicorn pauses reading after it
    deadline = time.monotonic() + 10
    while not upstream.requests("t-slow") and time.monotonic() < deadline:
        time.sleep(0.02)
    (seen,) = upstream.requests("t-slow")  # the body is read and the relay is running
    client.close()
    left = time.monotonic()
    while seen.closed is None and time.monotonic() < left + 8:  # the answer never ends by itself
        time.sleep(0.02)
    assert seen.closed is not None, "the upstream request was still open 8 s after the client left"
    assert seen.closed - left < 1.0, (
        f"the upstream was closed {seen.closed - left:.2f}s after the client left"
    )
    deadline = time.monotonic() + 5
    while "relay cancelled" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "relay cancelled" in server.output(), server.output()[-2000:]


def test_an_error_before_a_hot_route_answers_is_a_counted_json_500():
    """The streams and the relay skip Starlette's middleware: an exception their response raises
    before it starts must still be answered as every other route's, and counted."""

    class Broken:  # an ASGI response that fails before it starts (no status known in advance)
        async def __call__(self, scope, receive, send) -> None:
            raise TypeError("an unforeseen input")

    async def endpoint(request):
        return Broken()

    route = Route("/v1/broken", endpoint, methods=["POST"])
    runtime = Runtime(parse_config("topics: {}\n"))
    telemetry = Telemetry(runtime.broker, runtime.supervisor, runtime.admission)
    app = DashboardApp(
        hosts=HostCheck(["*"]),
        telemetry=telemetry,
        hot=[route],
        routes=[route],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/broken", "root_path": "", "headers": []}
    asyncio.run(app({**scope, "query_string": b""}, receive, send))
    assert sent[0]["status"] == 500
    error = json.loads(sent[1]["body"])["error"]
    assert error == {"code": "internal_error", "message": "internal server error"}
    labels = {"method": "POST", "route": "/v1/broken", "status": "500"}
    assert telemetry.registry.get_sample_value("dashboard_http_requests_total", labels) == 1
