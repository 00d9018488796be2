"""The application: every route in one list, each endpoint bound to the parts of the runtime it
uses, and the gate every request passes first."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from dashboard import views
from dashboard.web import direct
from dashboard.web.api import API
from dashboard.web.cors import ReadsCORS
from dashboard.web.errors import EXCEPTION_HANDLERS, exception_response
from dashboard.web.gate import HostCheck, allowed_hosts, header_refusal
from dashboard.web.pages import Pages, ViewScripts
from dashboard.web.publish import Publish
from dashboard.web.relay import RelayRoutes
from dashboard.web.sse import Streams
from dashboard.web.telemetry import UNMATCHED, Metrics, RequestMetrics, Telemetry

if TYPE_CHECKING:
    from dashboard.feed import Feed
    from dashboard.runtime import Runtime

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def feed_routes(feeds: dict[str, Feed]) -> list[BaseRoute]:
    """Each feed's own routes, mounted under /feeds/{topic}/."""
    mounts: list[BaseRoute] = []
    for topic, feed in feeds.items():
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
        self.static = {route.path: route for route in hot if not route.param_convertors}

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
        # A path without parameters is looked up (the relay's); the others are matched in turn.
        static = self.static.get(scope["path"])
        for route in (static,) if static is not None else self.hot:
            match, child = route.matches(scope)
            if match is Match.FULL:
                scope["route"], scope["path_params"] = route, child["path_params"]
                return route
        return None


def create_app(runtime: Runtime) -> DashboardApp:
    """The app serving `runtime`: every route in one list, each endpoint bound to the parts it uses."""
    config = runtime.config
    access = runtime.access
    telemetry = runtime.telemetry
    metrics = Metrics(telemetry, access, runtime.keys, list(config.topics))
    pages = Pages(access, config, runtime.boards, runtime.supervisor, runtime.alerts)
    streams = Streams(runtime.broker, access, runtime.admission, runtime.heartbeat, config.server)
    api = API(
        access,
        config,
        runtime.broker,
        runtime.supervisor,
        runtime.presence,
        runtime.alerts,
        runtime.admission,
        runtime.config_status,
        runtime.instance,
    )
    publish = Publish(runtime.feeds, config, runtime.broker)
    relay = RelayRoutes(access, runtime.completions, config.server.max_body)
    routes: list[BaseRoute] = [
        Route("/", pages.index),
        Route("/d/{name}", pages.board),
        Route("/embed/{dashboard}/{n}", pages.embed),
        Route("/views/{name}.js", ViewScripts(views.scripts()).script),
        Route("/sse", streams.multiplexed_stream),
        Route("/sse/{topic}", streams.topic_stream),
        Route("/api/topics", api.topics),
        Route("/api/alerts", api.alerts),
        Route("/healthz", api.healthz),
        Route("/publish/{topic}", publish.endpoint, methods=["POST"]),
        Route("/metrics", metrics.endpoint),
        Route("/v1/chat/completions", relay.chat_completions, methods=["POST"]),
        Route("/v1/messages", relay.messages, methods=["POST"]),
        Route("/v1/responses", relay.responses, methods=["POST"]),
        Route("/v1/models", relay.models),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        *feed_routes(runtime.feeds),
    ]
    middleware = []
    if config.server.cors_origins:
        cors = config.server.cors_origins
        middleware.append(Middleware(ReadsCORS, origins=cors, credentials=config.server.cors_credentials))
    middleware.append(Middleware(RequestMetrics, telemetry=telemetry))
    # The streams and the relay skip the stack; the streams take it when CORS must add its headers.
    hot = {"/v1/chat/completions", "/v1/messages", "/v1/responses"}
    if not config.server.cors_origins:
        hot |= {"/sse", "/sse/{topic}"}
    return DashboardApp(
        hosts=HostCheck(allowed_hosts(config)),
        telemetry=telemetry,
        hot=[route for route in routes if isinstance(route, Route) and route.path in hot],
        routes=routes,
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=runtime.lifespan,
    )


class Reloadable:
    """What uvicorn serves: the app of the config in force, which a reload replaces (`current`).
    A request is served by the app that took it, to its end: an open stream is never moved."""

    def __init__(self, app: DashboardApp) -> None:
        self.current = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.current(scope, receive, send)
