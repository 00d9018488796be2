"""Presence: how many streams watch each topic, counted on every instance sharing the broker, and
pushed to the streams that asked for it (`?presence=1`, as the page does) when it changes.

Each instance shares its own counts when they change (at most every DEBOUNCE seconds) and as a
heartbeat; counts not heard again within the broker's lease TTL are dropped (a dead instance).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

from dashboard.broker import Broker
from dashboard.errors import BrokerUnavailable

PRESENCE_EVENT = "presence"  # `event: topic:presence` on multiplexed streams
DEBOUNCE = 0.25  # seconds: the counts are shared and pushed at most this often


class Presence:
    """This instance's part of presence: shares its counts, hears the others', tells streams."""

    def __init__(self, broker: Broker, ttl: float) -> None:
        self.broker = broker
        self.ttl = ttl
        self.instance = uuid.uuid4().hex
        self.remote: dict[str, tuple[float, dict[str, int]]] = {}  # instance -> (expires, counts)
        self.changed = asyncio.Event()
        broker.when_watchers_change(self.changed.set)

    def local(self) -> dict[str, int]:
        topics = self.broker.topics.items()
        return {name: len(state.subscribers) for name, state in topics if state.subscribers}

    def watching(self, topic: str) -> int:
        """Streams open on `topic` on every instance."""
        own = len(self.broker.topics[topic].subscribers)
        return own + sum(counts.get(topic, 0) for _, counts in self.remote.values())

    async def run(self) -> None:
        await asyncio.gather(self._share(), self._hear())

    async def _share(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), self.ttl / 3)
            self.changed.clear()
            with contextlib.suppress(BrokerUnavailable):  # the broker's reader reports outages
                await self.broker.share_presence(self.instance, self.local())
            self.tell()
            await asyncio.sleep(DEBOUNCE)

    async def _hear(self) -> None:
        async for instance, counts in self.broker.presence_updates():
            if instance == self.instance:
                continue
            if instance not in self.remote:
                self.changed.set()  # a newcomer: tell it our counts now, not at the next heartbeat
            self.remote[instance] = (time.monotonic() + self.ttl, counts)
            self.tell()

    async def leave(self) -> None:
        """On shutdown: this instance's streams watch nothing any more."""
        with contextlib.suppress(BrokerUnavailable, AssertionError):
            await self.broker.share_presence(self.instance, {})

    def tell(self) -> None:
        """Push each topic's number to the streams that asked for it and were not told it yet."""
        now = time.monotonic()
        self.remote = {i: entry for i, entry in self.remote.items() if entry[0] > now}
        for name, state in self.broker.topics.items():
            if not state.subscribers:
                continue
            total = self.watching(name)
            data = json.dumps({"watching": total})
            for sub in tuple(state.subscribers):
                if sub.presence is None or sub.presence.get(name) == total:
                    continue
                sub.presence[name] = total
                sub.sink.notice(name, PRESENCE_EVENT, data)
