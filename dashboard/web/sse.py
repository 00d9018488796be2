"""Server-Sent Events responses: one topic, or several multiplexed on one connection."""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from dashboard.broker import Broker, Subscription
from dashboard.events import encode_comment, encode_retry
from dashboard.web.errors import HTTPError

log = logging.getLogger("dashboard.sse")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
KEEPALIVE = encode_comment("keepalive")


class EventStream:
    """An ASGI response that drains one subscription: all waiting frames go out in one write."""

    def __init__(self, broker: Broker, sub: Subscription, *, retry_ms: int, keepalive: float) -> None:
        self.broker = broker
        self.sub = sub
        self.retry_ms = retry_ms
        self.keepalive = keepalive

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sub = self.sub
        watcher = asyncio.create_task(self._close_on_disconnect(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            await send({"type": "http.response.body", "body": encode_retry(self.retry_ms), "more_body": True})
            while (chunk := await sub.next_chunk(self.keepalive)) is not None:
                await send({"type": "http.response.body", "body": chunk or KEEPALIVE, "more_body": True})
            if not watcher.done():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-write
        finally:
            watcher.cancel()
            self.broker.unsubscribe(sub)

    async def _close_on_disconnect(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.sub.close()


def last_event_id(request: Request) -> int | None:
    """Where to resume: the Last-Event-ID header (sent by EventSource itself) or `?last_event_id=`."""
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise HTTPError(400, f"Last-Event-ID must be an event id from this server, got {raw!r}") from None


def replay_count(request: Request) -> int | None:
    """`?replay=N`: how many stored events a fresh connection gets first (default: all)."""
    raw = request.query_params.get("replay")
    if raw is None:
        return None
    if not raw.isdigit():
        raise HTTPError(400, f"replay must be a whole number, got {raw!r}")
    return int(raw)


async def open_stream(request: Request, topics: list[str], *, mux: bool) -> EventStream:
    runtime = request.app.state.runtime
    broker: Broker = runtime.broker
    if runtime.stopping:
        raise HTTPError(503, "the server is shutting down")
    for name in topics:
        broker.topic(name)  # UnknownTopic -> 404
    sub = await broker.subscribe(topics, last_event_id(request), mux=mux, replay=replay_count(request))
    server = runtime.config.server
    return EventStream(broker, sub, retry_ms=server.retry_ms, keepalive=server.keepalive)


async def topic_stream(request: Request) -> EventStream:
    """GET /sse/{topic}"""
    return await open_stream(request, [request.path_params["topic"]], mux=False)


async def multiplexed_stream(request: Request) -> EventStream:
    """GET /sse?topic=a&topic=b: `event:` is the topic, or `topic:type` for a typed event."""
    topics = request.query_params.getlist("topic")
    if not topics:
        raise HTTPError(400, "name at least one topic: /sse?topic=a&topic=b")
    return await open_stream(request, topics, mux=True)
