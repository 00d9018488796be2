"""The composition root: builds the running server from its config (broker, feeds and their
supervisor, relay, keys, access rules, alerts, presence, the app), wires the parts together, and
owns startup and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette

from dashboard import broker as brokers
from dashboard.alerts import Alerts
from dashboard.auth import Access
from dashboard.backoff import Backoff
from dashboard.config import Config
from dashboard.context import FeedContext
from dashboard.events import Event, Message
from dashboard.feed import Feed
from dashboard.presence import Presence
from dashboard.relay import Relay
from dashboard.relay.keys import Keys
from dashboard.relay.lifecycle import Completions
from dashboard.supervisor import Supervisor
from dashboard.tasks import cancel_and_wait
from dashboard.web import direct, sse
from dashboard.web.admission import FD_HEADROOM, Admission, open_files_limit
from dashboard.web.app import create_app
from dashboard.web.boards import boards
from dashboard.web.logfilter import HIDE_TOKENS


class Runtime:
    """What the running server is made of: config, broker, feeds and their supervisor, the relay,
    and the app that serves them (`app`, with `lifespan` as its startup and shutdown)."""

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
        self.admission = Admission(open_files_limit() - FD_HEADROOM, config.server.max_streams_per_client)
        self.feeds: dict[str, Feed] = {}
        self.relay = Relay(config.ai)
        self.keys = Keys(config, self.broker, self.relay)
        self.completions = Completions(self.relay, self.keys)
        self.access = Access(config)
        self.boards = boards(config)
        for name, topic in config.topics.items():
            self.broker.add_topic(name, topic.history)
            feed = topic.make_feed(name)
            feed.attach(self.supervisor.publish, self.feed_context(feed))  # fenced from its own task
            self.feeds[name] = feed
            self.supervisor.add(name, feed)
        self.alerts = Alerts(config.alerts, self.broker)
        self.presence = Presence(self.broker, config.broker.lease_ttl)
        self.app = create_app(self)

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

    async def publish(self, topic: str, event: Event) -> Message:
        return await self.broker.publish(topic, event)

    def close_streams(self) -> None:
        """Shutdown begins: end every open stream so that connections close promptly."""
        self.admission.stopping = True
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
