"""Feed leases in Redis: one instance holds `<prefix>:lease:<topic>` at a time, renewing it while
it runs the topic's feed; the publish script refuses events fenced by a lease held elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from dashboard.broker.leases import Lease
from dashboard.broker.redis.scripts import RELEASE, RENEW

log = logging.getLogger("dashboard.broker.redis")


class RedisLeases:
    """The leases this instance holds, and the tasks renewing them."""

    def __init__(self, prefix: str, ttl: float) -> None:
        self.prefix = prefix
        self.ttl = ttl
        self._client: aioredis.Redis | None = None
        self._renewers: dict[Lease, asyncio.Task[None]] = {}

    def key(self, topic: str) -> str:
        return f"{self.prefix}:lease:{topic}"

    def use(self, client: aioredis.Redis) -> None:
        """Take leases on `client` (a connection of their own, so a busy publisher never delays
        a renewal)."""
        self._client = client
        self._renew_script = client.register_script(RENEW)
        self._release_script = client.register_script(RELEASE)

    def stop(self) -> list[asyncio.Task[None]]:
        """The renewing tasks, to cancel: this instance stops."""
        renewers = list(self._renewers.values())
        self._renewers.clear()
        return renewers

    async def acquire(self, topic: str) -> Lease:
        """Wait until this instance holds `topic`'s lease, polling while another one holds it."""
        assert self._client is not None, "broker not connected"
        lease = Lease(topic, uuid.uuid4().hex)
        ttl_ms = int(self.ttl * 1000)
        poll = min(1.0, self.ttl / 4)
        while True:
            attempted = time.monotonic()
            try:
                if await self._client.set(self.key(topic), lease.token, nx=True, px=ttl_ms):
                    break
            except (RedisError, OSError):
                pass  # the reader reports the outage; keep trying
            await asyncio.sleep(poll)
        log.info("topic %r: this instance leads its feed now", topic)
        self._renewers[lease] = asyncio.create_task(self._renew(lease, attempted), name=f"lease:{topic}")
        return lease

    async def _renew(self, lease: Lease, renewed_at: float) -> None:
        key, ttl_ms = self.key(lease.topic), int(self.ttl * 1000)
        while not lease.lost.is_set():
            await asyncio.sleep(self.ttl / 3)
            sent = time.monotonic()
            try:
                kept = await self._renew_script(keys=[key], args=[lease.token, ttl_ms])
            except (RedisError, OSError):
                if time.monotonic() - renewed_at >= self.ttl:
                    self.lose(lease, "it could not be renewed in time")
                continue
            if kept:
                renewed_at = sent
            else:
                self.lose(lease, "another instance holds it")

    def lose(self, lease: Lease, why: str) -> None:
        """Mark `lease` lost (another instance leads the feed now) and stop renewing it."""
        if not lease.lost.is_set():
            log.warning("topic %r: lost the lease of its feed (%s); standing by", lease.topic, why)
            lease.lost.set()
        renewer = self._renewers.pop(lease, None)
        if renewer is not None and renewer is not asyncio.current_task():
            renewer.cancel()

    async def release(self, lease: Lease) -> None:
        """Give `lease` up at once, so another instance need not wait for it to expire."""
        renewer = self._renewers.pop(lease, None)
        if renewer is not None:
            renewer.cancel()
        if lease.lost.is_set() or self._client is None:
            return
        lease.lost.set()
        with contextlib.suppress(RedisError, OSError, TimeoutError):  # else it expires by itself
            await asyncio.wait_for(
                self._release_script(keys=[self.key(lease.topic)], args=[lease.token]), 1.0
            )
