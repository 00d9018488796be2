"""The application: every route in one list, and the lifespan that runs the broker and the feeds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from dashboard import broker as brokers
from dashboard.alerts import Alerts
from dashboard.auth import Access
from dashboard.backoff import Backoff
from dashboard.config import Config
from dashboard.context import FeedContext
from dashboard.events import Event
from dashboard.events import Message as EventMessage
from dashboard.feed import Feed
from dashboard.presence import Presence
from dashboard.relay import Relay
from dashboard.relay.keys import Keys
from dashboard.relay.lifecycle import Completions
from dashboard.supervisor import Supervisor
from dashboard.tasks import cancel_and_wait
from dashboard.web import api, direct, pages, publish, sse
from dashboard.web.cors import ReadsCORS
from dashboard.web.errors import EXCEPTION_HANDLERS, exception_response, header_refusal
from dashboard.web.gate import HostCheck, allowed_hosts
from dashboard.web.logfilter import HIDE_TOKENS
from dashboard.web.relay import RelayRoutes
from dashboard.web.telemetry import UNMATCHED, RequestMetrics, Telemetry

log = logging.getLogger("dashboard")

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


class Runtime:
    """What the running server is made of: config, broker, feeds and their supervisor."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.broker = brokers.from_url(
            config.broker.url,
            history=config.broker.history,
            prefix=config.broker.prefix,
            lease_ttl=config.broker.lease_ttl,
        )
        backoff = Backoff(config.supervisor.initial_backoff, config.supervisor.max_backoff)
        self.supervisor = Supervisor(self.publish, backoff, leases=self.broker)
        self.heartbeat = sse.Heartbeat(config.server.keepalive)
        self.admission = sse.Admission(
            sse.open_files_limit() - sse.FD_HEADROOM, config.server.max_streams_per_client
        )
        self.feeds: dict[str, Feed] = {}
        self.stopping = False
        self.relay = Relay(config.ai)
        self.keys = Keys(config, self.broker, self.relay)
        self.completions = Completions(self.relay, self.keys)
        self.access = Access(config)
        self.boards = config.boards()
        for name, topic in config.topics.items():
            self.broker.add_topic(name, topic.history)
            feed = topic.make_feed(name)
            feed.attach(self.publish, self.feed_context(feed))
            self.feeds[name] = feed
            self.supervisor.add(name, feed)
        self.alerts = Alerts(config.alerts, self.broker)
        self.presence = Presence(self.broker, config.broker.lease_ttl)

    def feed_context(self, feed: Feed) -> FeedContext:
        return FeedContext(
            feed.topic,
            feed.options,
            config=self.config,
            broker=self.broker,
            relay=self.relay,
            access=self.access,
            keys=self.keys,
            completions=self.completions,
            supervisor=self.supervisor,
        )

    async def publish(self, topic: str, event: Event) -> EventMessage:
        return await self.broker.publish(topic, event)

    def close_streams(self) -> None:
        """Shutdown begins: end every open stream so that connections close promptly."""
        self.stopping = True
        self.broker.close_subscriptions()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        logging.getLogger("uvicorn.access").addFilter(HIDE_TOKENS)  # once uvicorn set up its logging
        direct.log_fast_path()
        await self.broker.connect()
        self.supervisor.start()
        self.alerts.start()
        heartbeat = asyncio.create_task(self.heartbeat.run(), name="heartbeat")
        presence = asyncio.create_task(self.presence.run(), name="presence")
        try:
            yield
        finally:
            self.close_streams()
            heartbeat.cancel()
            await cancel_and_wait([presence])
            await self.presence.leave()
            await self.alerts.stop()
            await self.supervisor.stop()
            await asyncio.gather(*(feed.aclose() for feed in self.feeds.values()), return_exceptions=True)
            await asyncio.gather(*(feed.context.tasks.aclose() for feed in self.feeds.values()))
            await self.relay.aclose()
            await self.broker.disconnect()


def feed_routes(runtime: Runtime) -> list[BaseRoute]:
    """Each feed's own routes, mounted under /feeds/{topic}/."""
    mounts: list[BaseRoute] = []
    for topic, feed in runtime.feeds.items():
        routes = feed.routes()
        if routes:
            mounts.append(Mount(f"/feeds/{topic}", routes=routes))
    return mounts


class DashboardApp(Starlette):
    """Starlette, with two things done before its middleware stack.

    Every request passes the gate first: the Host check (421) and the header bound (400). Then
    the hot routes (the streams and the relay) are served by their endpoints directly, with the
    same error handling and request counting as the rest, but without the dozen ASGI layers
    around every other route: each of those is a coroutine frame held for a stream's whole life
    and a `send` wrapper on every chunk. The server's own `send` is kept in the scope for the
    streams' direct writes (see direct.py).
    """

    def __init__(self, *, hosts: HostCheck, telemetry: Telemetry, hot: list[Route], **options: Any) -> None:
        super().__init__(**options)
        self.hosts = hosts
        self.telemetry = telemetry
        self.hot = hot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http":
            scope[direct.RAW_SEND] = send
            route = self.gate(scope)
        if route is None:
            await super().__call__(scope, receive, send)
            return
        if isinstance(route, Response):  # refused at the gate
            await route(scope, receive, send)
            return
        # A hot route, answered as Starlette would, errors and request count included.
        scope["app"] = self
        request = Request(scope, receive)
        try:
            response = await route.endpoint(request)
        except Exception as exc:
            response = await exception_response(request, exc)
        del request  # not held for a stream's whole life
        status = getattr(response, "status_code", None)
        if status is not None:
            self.telemetry.count(scope["method"], route.path, status)
            await response(scope, receive, send)
            return
        started = False

        async def send_counted(message: Message) -> None:  # a relay learns its status as it goes
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self.telemetry.count(scope["method"], route.path, message["status"])
            await send(message)

        try:
            await response(scope, receive, send_counted)
        except Exception as exc:
            if started:
                raise  # too late for an error response: uvicorn logs it and closes the connection
            error = await exception_response(Request(scope, receive), exc)
            await error(scope, receive, send_counted)

    def gate(self, scope: Scope) -> Route | Response | None:
        """The refusal for a request that fails the gate, the hot route that serves it, or None."""
        refusal = self.hosts.refusal(scope) or header_refusal(scope)
        if refusal is not None:
            self.telemetry.count(scope["method"], UNMATCHED, refusal.status_code)
            return refusal
        for route in self.hot:
            match, child = route.matches(scope)
            if match is Match.FULL:
                scope["route"], scope["path_params"] = route, child["path_params"]
                return route
        return None


def create_app(config: Config) -> Starlette:
    runtime = Runtime(config)
    telemetry = Telemetry(runtime)
    relay = RelayRoutes(runtime.access, runtime.completions, config.server.max_body)
    routes: list[BaseRoute] = [
        Route("/", pages.index),
        Route("/d/{name}", pages.board),
        Route("/embed/{dashboard}/{n}", pages.embed),
        Route("/sse", sse.multiplexed_stream),
        Route("/sse/{topic}", sse.topic_stream),
        Route("/api/topics", api.topics),
        Route("/api/alerts", api.alerts),
        Route("/healthz", api.healthz),
        Route("/publish/{topic}", publish.publish, methods=["POST"]),
        Route("/metrics", telemetry.endpoint),
        Route("/v1/chat/completions", relay.chat_completions, methods=["POST"]),
        Route("/v1/messages", relay.messages, methods=["POST"]),
        Route("/v1/models", relay.models),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        *feed_routes(runtime),
    ]
    middleware = []
    if config.server.cors_origins:
        cors = config.server.cors_origins
        middleware.append(Middleware(ReadsCORS, origins=cors, credentials=config.server.cors_credentials))
    middleware.append(Middleware(RequestMetrics, telemetry=telemetry))
    # The streams and the relay skip the stack; the streams take it when CORS must add its headers.
    hot = {"/v1/chat/completions", "/v1/messages"}
    if not config.server.cors_origins:
        hot |= {"/sse", "/sse/{topic}"}
    app = DashboardApp(
        hosts=HostCheck(allowed_hosts(config)),
        telemetry=telemetry,
        hot=[route for route in routes if isinstance(route, Route) and route.path in hot],
        routes=routes,
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=runtime.lifespan,
    )
    app.state.runtime = runtime
    return app
