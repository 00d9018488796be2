"""The Redis broker: one Redis Stream per topic, shared by every instance, and feed leases.

Ids: one Lua script assigns the id and appends the event atomically, id = max(last + 1, Redis
clock in microseconds), kept in one key for all topics. So ids grow in commit order across topics
and instances, and one XREAD over every topic's stream reads a prefix of that order: each
process delivers events in id order, and a Last-Event-ID from any instance resumes on any other.

Live fan-out: one reader task per process blocks on XREAD for all topics and hands each event,
encoded once, to the shared local fan-out. Publishing returns once Redis has stored the event;
local subscribers get it through the reader, like everyone else's events.

History: the reader also keeps each topic's ring (`TopicState.history`, as long as the topic's
Redis Stream), loaded once at start, so a new or resuming stream costs no Redis trip. Only ids
older than the ring are read from Redis, one read shared by every stream asking for that range.
Publishing, leases, the reader and those reads each have their own connections, so a storm of
reconnecting streams never takes the connection a feed needs to publish.

The parts: scripts.py (the Lua steps), reader.py (the reader and the rings), leases.py (feed
leases), ledger.py (the ledger primitive), replicas.py (`min_replicas`: publishing with WAIT),
sentinel.py (`redis+sentinel://`: the same broker, its primary found through Redis Sentinel).
Keys, all under the prefix: `<prefix>:id`, `<prefix>:topic:<name>` (a topic's stream),
`<prefix>:evicted:<name>`, `<prefix>:lease:<name>`, `<prefix>:claim:<key>`,
`<prefix>:window:<account>`, `<prefix>:spend:<day>`, and the channel `<prefix>:presence`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from dashboard.broker.contract import Broker, Hold, Limits, Refusal, check_requested_id
from dashboard.broker.leases import Lease, fence
from dashboard.broker.redis.leases import RedisLeases
from dashboard.broker.redis.ledger import RedisLedger
from dashboard.broker.redis.reader import BLOCK_MS, RECONNECT, StreamReader, decode, entry_id
from dashboard.broker.redis.replicas import ReplicaWait
from dashboard.broker.redis.scripts import PUBLISH
from dashboard.errors import BrokerUnavailable, InvalidEvent, LeadershipLost
from dashboard.events import Event, Message, encode_data, event_type
from dashboard.tasks import cancel_and_wait

log = logging.getLogger("dashboard.broker.redis")

HISTORY_CONNECTIONS = 4  # connections for history older than the ring; more readers wait their turn
HISTORY_TIMEOUT = 30.0  # a slow history read makes its streams wait this long before they fail
MAX_ID = 2**53  # ids are Lua numbers (doubles) in the script


class RedisBroker(Broker):
    """Events in Redis Streams (`<prefix>:topic:<name>`), ids from `<prefix>:id`, leases in
    `<prefix>:lease:<name>`. See the module docs for how order and resume hold across instances."""

    shared = True

    @classmethod
    def from_url(
        cls, url: str, *, history: int, prefix: str, lease_ttl: float, min_replicas: int = 0
    ) -> RedisBroker:
        return cls(url, history=history, prefix=prefix, lease_ttl=lease_ttl, min_replicas=min_replicas)

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "dashboard",
        lease_ttl: float = 5.0,
        min_replicas: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.url = url
        self.prefix = prefix
        self.lease_ttl = lease_ttl
        self.where = self.location(url)
        self.replicas = ReplicaWait(min_replicas, self.where) if min_replicas else None
        self._client: aioredis.Redis | None = None  # publishing, claims and the ledger
        self._lease_client: aioredis.Redis | None = None  # leases and presence
        self._history_client: aioredis.Redis | None = None  # history older than the rings
        self._reader_client: aioredis.Redis | None = None
        self._healthy = False
        self.reader = StreamReader(self)
        self.leases = RedisLeases(prefix, lease_ttl)
        self.ledger = RedisLedger(prefix, self._unavailable)
        self._older_reads: dict[tuple[str, int, int], asyncio.Task[list[Message]]] = {}

    @staticmethod
    def location(url: str) -> str:
        """Where Redis is, for messages: never the password."""
        parts = urlsplit(url)
        return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}{parts.path or ''}"

    # -- keys ----------------------------------------------------------------------------------
    @property
    def id_key(self) -> str:
        return f"{self.prefix}:id"

    def stream_key(self, topic: str) -> str:
        return f"{self.prefix}:topic:{topic}"

    def evicted_key(self, topic: str) -> str:
        return f"{self.prefix}:evicted:{topic}"

    def claim_key(self, key: str) -> str:
        return f"{self.prefix}:claim:{key}"

    @property
    def presence_channel(self) -> str:
        return f"{self.prefix}:presence"

        return f"{self.prefix}:spend:"

    # -- connection ----------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return self._healthy

    def describe(self) -> str:
        return f"in Redis at {self.where}, under the prefix {self.prefix!r}"

    def _connect_client(
        self,
        socket_timeout: float,
        pool: type[aioredis.ConnectionPool] = aioredis.ConnectionPool,
        **limits: Any,
    ) -> aioredis.Redis:
        # No retries: a publish retried after a lost reply could store its event twice.
        return aioredis.Redis.from_pool(
            pool.from_url(
                self.url,
                socket_connect_timeout=2.0,
                socket_timeout=socket_timeout,
                retry=Retry(NoBackoff(), 0),
                **limits,
            )
        )

    @property
    def _clients(self) -> list[aioredis.Redis]:
        clients = (self._client, self._lease_client, self._reader_client, self._history_client)
        return [c for c in clients if c is not None]

    async def connect(self) -> None:
        self._client = self._connect_client(5.0)
        self._lease_client = self._connect_client(5.0)
        self._reader_client = self._connect_client(BLOCK_MS / 1000 + 5.0)
        # Streams wanting old history queue for a few connections rather than fail.
        self._history_client = self._connect_client(
            HISTORY_TIMEOUT,
            aioredis.BlockingConnectionPool,
            max_connections=HISTORY_CONNECTIONS,
            timeout=None,
        )
        self._publish_script = self._client.register_script(PUBLISH)
        self.leases.use(self._lease_client)
        self.ledger.use(self._client)
        await self.reader.start(self._client, self._reader_client)

    async def topic_added(self, name: str) -> None:
        await self.reader.add_topic(name, self._history_client or self._client)

    def remove_topic(self, name: str, data: str) -> None:
        super().remove_topic(name, data)
        self.reader.remove_topic(name)

    async def disconnect(self) -> None:
        await super().disconnect()
        tasks = [t for t in (self.reader.task, *self.leases.stop()) if t is not None]
        await cancel_and_wait([*tasks, *self._older_reads.values()])
        for client in self._clients:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
        self._healthy = False

    def _unavailable(self, doing: str, exc: BaseException) -> BrokerUnavailable:
        self._healthy = False
        reason = type(exc).__name__
        return BrokerUnavailable(f"cannot {doing}: Redis at {self.where} is unreachable ({reason})")

    # -- events --------------------------------------------------------------------------------
    async def publish(self, topic: str, event: Event) -> Message:
        state = self.topic(topic)
        assert self._client is not None, "broker not connected"
        lease = fence.get()
        token = lease.token if lease is not None and lease.topic == topic else ""
        requested = ""
        if event.id is not None:
            wanted = check_requested_id(event.id, 0)
            if wanted >= MAX_ID:
                raise InvalidEvent(f"Event.id must be below {MAX_ID}, got {wanted}")
            requested = str(wanted)
        kind, data = event_type(event.event), encode_data(event.data)
        ts = time.time()
        try:
            await self.reader.settle_last(self._client)
            keys = [self.id_key, self.stream_key(topic), self.leases.key(topic), self.evicted_key(topic)]
            args = [
                state.history.maxlen or self.default_history,
                self.reader.last,
                requested,
                token,
                int(self.lease_ttl * 1000),
                kind,
                data,
                repr(ts),
            ]
            if self.replicas is None:
                sid = await self._publish_script(keys=keys, args=args)
            else:
                sid = await self.replicas.store(self._client, self._publish_script, topic, event, keys, args)
        except ResponseError as exc:
            reason = str(exc)
            if reason.startswith("FENCED"):
                assert lease is not None
                self.leases.lose(lease, "another instance holds its lease")
                raise LeadershipLost(
                    f"topic {topic!r}: another instance leads this feed now; the event was not stored"
                ) from None
            if reason.startswith("IDORDER"):
                last = reason.split()[1]
                raise InvalidEvent(
                    f"Event.id {requested} is not above the last id {last}; leave id unset"
                ) from None
            raise BrokerUnavailable(f"Redis at {self.where} refused the event: {reason}") from None
        except (RedisError, OSError) as exc:
            raise self._unavailable(f"store the event on {topic!r}", exc) from exc
        message = Message.build(int(sid), topic, kind, data, ts)
        self.topics[topic].stored += 1
        if message.id > self.reader.last:
            self.reader.own[message.id] = message
        return message

    async def read_history(self, topic: str, after_id: int | None) -> list[Message]:
        state = self.topic(topic)
        assert self._client is not None, "broker not connected"
        try:
            await self.reader.settle_last(self._client)
        except (RedisError, OSError) as exc:
            raise self._unavailable(f"read the history of {topic!r}", exc) from exc
        if self.reader.own:  # read your own writes: what this process stored is in its rings
            await self.reader.reached(max(self.reader.own))
        start, older = after_id, []
        # Ids at or below the ring's floor are asked of Redis; the floor may rise meanwhile.
        while start is not None and start < (floor := self.reader.ring_from.get(topic, 0)):
            older += await self._read_older(topic, start, floor)
            start = floor
        return older + state.after(start)

    def deliver(self, message: Message) -> None:
        history = self.topics[message.topic].history
        if len(history) == history.maxlen:  # the ring drops its oldest: Redis has to answer for it
            self.reader.ring_from[message.topic] = history[0].id
        super().deliver(message)

    async def _read_older(self, topic: str, after: int, upto: int) -> list[Message]:
        """`topic`'s stored messages with ids in (after, upto]: one Redis read shared by every
        stream asking for the same range meanwhile."""
        key = (topic, after, upto)
        read = self._older_reads.get(key)
        if read is None:
            read = asyncio.create_task(self._xrange(topic, after, upto), name=f"history:{topic}")
            self._older_reads[key] = read
            read.add_done_callback(self._older_read_done)
        return await asyncio.shield(read)

    def _older_read_done(self, read: asyncio.Task[list[Message]]) -> None:
        self._older_reads = {k: t for k, t in self._older_reads.items() if t is not read}
        if not read.cancelled():
            read.exception()  # retrieved here too: every stream waiting for it may have left

    async def _xrange(self, topic: str, after: int, upto: int) -> list[Message]:
        assert self._history_client is not None, "broker not connected"
        start = "-" if after <= 0 else f"({after}-0"
        try:
            entries = await self._history_client.xrange(self.stream_key(topic), min=start, max=f"{upto}-0")
        except (RedisError, OSError) as exc:
            raise self._unavailable(f"read the history of {topic!r}", exc) from exc
        return [decode(topic, entry_id(raw_id), fields) for raw_id, fields in entries]

    # A resume is checked here without a Redis trip when this process knows the answer; otherwise
    # on the history connections, which make a storm of streams wait, never the publisher.
    async def evicted_id(self, topic: str, after: int) -> int:
        if after >= self.reader.ring_from.get(topic, 0):
            return 0  # the ring holds every stored id above `after`: nothing was lost
        assert self._history_client is not None, "broker not connected"
        try:
            raw = await self._history_client.get(self.evicted_key(topic))
        except (RedisError, OSError) as exc:
            raise self._unavailable(f"read the history of {topic!r}", exc) from exc
        evicted = entry_id(raw) if raw else 0
        return evicted if evicted > after else 0

    async def gave(self, id: int) -> bool:
        if id <= self.reader.last:
            return True
        assert self._history_client is not None, "broker not connected"
        try:
            return id <= int(await self._history_client.get(self.id_key) or 0)
        except (RedisError, OSError) as exc:
            raise self._unavailable("read the newest event id", exc) from exc

    # -- presence ------------------------------------------------------------------------------
    async def share_presence(self, instance: str, counts: dict[str, int]) -> None:
        assert self._lease_client is not None, "broker not connected"
        message = json.dumps({"from": instance, "counts": counts})
        try:
            await self._lease_client.publish(self.presence_channel, message)
        except (RedisError, OSError) as exc:
            raise self._unavailable("share presence", exc) from exc

    async def presence_updates(self) -> AsyncIterator[tuple[str, dict[str, int]]]:
        """Every instance's counts from the presence channel, on a connection of its own that is
        opened again after an outage (a missed count comes again with the next heartbeat)."""
        failures = 0
        while True:
            client = self._connect_client(10.0)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.presence_channel)
                failures = 0
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    try:
                        shared = json.loads(message["data"])
                        yield str(shared["from"]), {str(k): int(v) for k, v in shared["counts"].items()}
                    except (ValueError, KeyError, TypeError, AttributeError):
                        log.warning("ignored a malformed presence message on %s", self.presence_channel)
            except (RedisError, OSError):
                failures += 1
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
                    await client.aclose()
            await asyncio.sleep(RECONNECT.delay(failures) if failures else 0)

    # -- claims --------------------------------------------------------------------------------

    async def claim(self, key: str, ttl: float) -> bool:
        assert self._client is not None, "broker not connected"
        try:
            stored = await self._client.set(self.claim_key(key), b"1", nx=True, px=max(1, int(ttl * 1000)))
        except (RedisError, OSError) as exc:
            raise self._unavailable("check for a duplicate", exc) from exc
        return bool(stored)

    async def unclaim(self, key: str) -> None:
        assert self._client is not None, "broker not connected"
        try:
            await self._client.delete(self.claim_key(key))
        except (RedisError, OSError) as exc:
            raise self._unavailable("forget a claim", exc) from exc

    # -- leases and the ledger: their own modules ----------------------------------------------
    async def acquire_lease(self, topic: str) -> Lease:
        return await self.leases.acquire(topic)

    async def release_lease(self, lease: Lease) -> None:
        await self.leases.release(lease)

    async def ledger_reserve(
        self, account: str, limits: Limits, tokens: int, nusd: int, *, window: int, days: int
    ) -> Hold | Refusal:
        return await self.ledger.reserve(account, limits, tokens, nusd, window=window, days=days)

    async def ledger_settle(
        self, account: str, hold: Hold, tokens: int, increments: list[tuple[str, int]], *, days: int
    ) -> dict[str, int]:
        return await self.ledger.settle(account, hold, tokens, increments, days=days)

    async def ledger_day(self, day: int) -> dict[str, int]:
        return await self.ledger.day(day)
