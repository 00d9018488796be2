"""Both ways a stream is written: straight to the socket under uvicorn, and plain ASGI `send` elsewhere."""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from dashboard.broker.memory import MemoryBroker
from dashboard.events import Event
from dashboard.web.direct import direct_writer
from dashboard.web.sink import KEEPALIVE, StreamSink
from dashboard.web.sse import Admission, EventStream, Heartbeat
from tests.support import sse_stream


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
        admission.admit()
        stream = EventStream(broker, sub, heartbeat, admission, retry_ms=100)
        beats = asyncio.create_task(heartbeat.run())
        task = asyncio.create_task(stream({"type": "http", "method": "GET"}, receive, send))
        for n in range(3, 6):
            await broker.publish("t", Event({"n": n}))
            await asyncio.sleep(0)
        await asyncio.sleep(0.2)  # on purpose: idle long enough for keepalives
        disconnect.set()
        await asyncio.wait_for(task, 5)
        beats.cancel()
        assert not broker.topics["t"].subscribers, "the subscription was not removed"
        assert admission.open == 0, "the stream was not counted out"
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
