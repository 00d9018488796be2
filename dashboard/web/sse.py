"""Server-Sent Events responses: one topic, or several multiplexed on one connection, and the one
heartbeat that keeps idle streams alive."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from dashboard.broker import Broker, Subscription
from dashboard.events import encode_retry
from dashboard.web.admission import Admission
from dashboard.web.direct import direct_writer, watch_hangup
from dashboard.web.errors import HTTPError, parse_count
from dashboard.web.sink import StreamSink

if TYPE_CHECKING:
    from dashboard.auth import Access
    from dashboard.config import ServerConfig

log = logging.getLogger("dashboard.sse")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


YIELD_EVERY = 1000  # keepalives written between two looks at the rest of the loop (about 20 ms)


class Heartbeat:
    """One timer for every open stream: a keepalive comment to each that was silent for a period."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.sinks: set[StreamSink] = set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            # Ticks on a fixed schedule: the time one takes (a second at 100,000 streams) must not
            # push every later one back, and each stream's keepalive with it.
            due = max(due + self.interval, loop.time())
            await asyncio.sleep(due - loop.time())
            for n, sink in enumerate(tuple(self.sinks), 1):
                if n % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # events go out meanwhile, not after the whole tick
                if sink not in self.sinks:
                    continue  # its stream ended meanwhile
                try:
                    if not sink.wrote:
                        sink.keepalive()
                    sink.wrote = False
                except Exception:  # one stream's failure must not end every stream's keepalives
                    log.exception("keepalive failed for a stream")


class EventStream:
    """An ASGI response that streams one subscription until it closes or the client leaves."""

    __slots__ = ("admission", "broker", "client", "gone", "heartbeat", "retry_ms", "sink", "sub")
    status_code = 200

    def __init__(
        self,
        broker: Broker,
        sub: Subscription,
        heartbeat: Heartbeat,
        admission: Admission,
        *,
        client: str,
        retry_ms: int,
    ) -> None:
        assert isinstance(sub.sink, StreamSink)
        self.broker = broker
        self.sub = sub
        self.sink: StreamSink = sub.sink
        self.heartbeat = heartbeat
        self.admission = admission
        self.client = client  # whose count of open streams this one is in
        self.retry_ms = retry_ms
        self.gone = False  # the client left

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sink = self.sink
        watcher = watch_hangup(scope, receive, self.hang_up)
        self.heartbeat.sinks.add(sink)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            await send({"type": "http.response.body", "body": encode_retry(self.retry_ms), "more_body": True})
            sink.writer = direct_writer(scope)
            if sink.writer is not None:
                self.admission.direct += 1
            while ((chunk := sink.take()) is not None or not sink.closed) and not self.gone:
                if chunk is None:
                    await sink.wait()
                    continue
                sink.sending = True
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sink.sending = False
            self._stop_direct_writes()  # nothing may follow the last chunk
            if not self.gone:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-write
        finally:
            self._stop_direct_writes()
            if watcher is not None:
                watcher.cancel()
            self.heartbeat.sinks.discard(sink)
            self.broker.unsubscribe(self.sub)
            self.admission.release(self.client)

    def hang_up(self) -> None:
        self.gone = True
        self.sub.close()

    def _stop_direct_writes(self) -> None:
        if self.sink.writer is not None:
            self.sink.writer = None
            self.admission.direct -= 1


def last_event_id(request: Request) -> int | None:
    """Where to resume: the Last-Event-ID header (sent by EventSource itself) or `?last_event_id=`."""
    header = request.headers.get("last-event-id")
    if header:  # sent as UTF-8 by browsers, read as latin-1 by Starlette: shown as sent when refused
        header = header.encode("latin-1").decode("utf-8", "replace")
    raw = header or request.query_params.get("last_event_id")
    return parse_count(raw.strip(), "Last-Event-ID") if raw else None


def replay_count(request: Request) -> int | None:
    """`?replay=N`: how many stored events a fresh connection gets first (default: all)."""
    raw = request.query_params.get("replay")
    return None if raw is None else parse_count(raw, "replay")


class Streams:
    """GET /sse and /sse/{topic}, bound to the broker, the access rules, the admission of streams,
    the heartbeat and the server's stream settings."""

    def __init__(
        self, broker: Broker, access: Access, admission: Admission, heartbeat: Heartbeat, server: ServerConfig
    ) -> None:
        self.broker = broker
        self.access = access
        self.admission = admission
        self.heartbeat = heartbeat
        self.max_backlog = server.max_backlog
        self.retry_ms = server.retry_ms

    async def open(self, request: Request, topics: list[str], *, mux: bool) -> EventStream:
        broker, admission = self.broker, self.admission
        if admission.stopping:
            raise HTTPError(503, "the server is shutting down")
        self.access.require(request, topics)  # 401 / 403, first: who may not read learns no names
        for name in topics:
            broker.topic(name)  # UnknownTopic -> 404
        last_id, replay = last_event_id(request), replay_count(request)
        client = self.access.client_address(request.scope)
        admission.admit(client)  # 429 past this client's streams, 503 while saturated
        try:
            sink = StreamSink(mux=mux, max_backlog=self.max_backlog)
            sub = await broker.subscribe(topics, last_id, sink=sink, replay=replay)
        except BaseException:
            admission.release(client)
            raise
        if request.query_params.get("presence") == "1":
            sub.presence = {}  # told how many watch each topic, now and when it changes
        return EventStream(broker, sub, self.heartbeat, admission, client=client, retry_ms=self.retry_ms)

    async def topic_stream(self, request: Request) -> EventStream:
        """GET /sse/{topic}"""
        return await self.open(request, [request.path_params["topic"]], mux=False)

    async def multiplexed_stream(self, request: Request) -> EventStream:
        """GET /sse?topic=a&topic=b: `event:` is the topic, or `topic:type` for a typed event."""
        topics = request.query_params.getlist("topic")
        if not topics:
            raise HTTPError(400, "name at least one topic: /sse?topic=a&topic=b")
        return await self.open(request, topics, mux=True)
