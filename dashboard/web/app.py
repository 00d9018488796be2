"""The application: every route in one list, and the lifespan that runs the broker and the feeds."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from dashboard import broker as brokers
from dashboard.config import Config
from dashboard.events import Event, Message
from dashboard.feed import Feed
from dashboard.supervisor import Backoff, Supervisor
from dashboard.web import api, pages, sse
from dashboard.web.errors import EXCEPTION_HANDLERS

log = logging.getLogger("dashboard")

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


class Runtime:
    """What the running server is made of: config, broker, feeds and their supervisor."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.broker = brokers.from_url(
            config.broker.url,
            history=config.broker.history,
            max_backlog=config.server.max_backlog,
            prefix=config.broker.prefix,
            lease_ttl=config.broker.lease_ttl,
        )
        backoff = Backoff(config.supervisor.initial_backoff, config.supervisor.max_backoff)
        self.supervisor = Supervisor(self.publish, backoff, leases=self.broker)
        self.feeds: dict[str, Feed] = {}
        self.stopping = False
        for name, topic in config.topics.items():
            self.broker.add_topic(name, topic.history)
            feed = topic.make_feed(name)
            feed.attach(self.publish, self)
            self.feeds[name] = feed
            self.supervisor.add(name, feed)

    async def publish(self, topic: str, event: Event) -> Message:
        return await self.broker.publish(topic, event)

    def close_streams(self) -> None:
        """Shutdown begins: end every open stream so that connections close promptly."""
        self.stopping = True
        self.broker.close_subscriptions()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.broker.connect()
        self.supervisor.start()
        try:
            yield
        finally:
            self.close_streams()
            await self.supervisor.stop()
            await self.broker.disconnect()


def feed_routes(runtime: Runtime) -> list[BaseRoute]:
    """Each feed's own routes, mounted under /feeds/{topic}/."""
    mounts: list[BaseRoute] = []
    for topic, feed in runtime.feeds.items():
        routes = feed.routes()
        if routes:
            mounts.append(Mount(f"/feeds/{topic}", routes=routes))
    return mounts


def create_app(config: Config) -> Starlette:
    runtime = Runtime(config)
    routes: list[BaseRoute] = [
        Route("/", pages.index),
        Route("/sse", sse.multiplexed_stream),
        Route("/sse/{topic}", sse.topic_stream),
        Route("/api/topics", api.topics),
        Route("/healthz", api.healthz),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        *feed_routes(runtime),
    ]
    app = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=runtime.lifespan)
    app.state.runtime = runtime
    return app
