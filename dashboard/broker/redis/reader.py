"""The Redis broker's reader: one XREAD over every topic's stream per process, delivering each new
event, encoded once, to the local fan-out in id order, and keeping each topic's ring of history.

It also owns what the process has read: the newest id delivered (`last`), the events this process
published that it has not read back yet (built once, delivered when read), and from which id each
topic's ring holds every stored event (older ones are read from Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from dashboard.backoff import Backoff
from dashboard.events import Message
from dashboard.tasks import cancel_and_wait

if TYPE_CHECKING:
    from dashboard.broker.redis import RedisBroker

log = logging.getLogger("dashboard.broker.redis")

RECONNECT = Backoff(0.1, 5.0)  # seconds between tries to reach Redis again, doubled, jittered
BLOCK_MS = 5000  # how long one XREAD waits for news before it is sent again
CATCH_UP_TIMEOUT = 5.0  # how long a new subscriber waits for the reader to reach this process's writes


def entry_id(raw: bytes) -> int:
    """The event id of a stream entry id (`<id>-0`)."""
    return int(raw.split(b"-", 1)[0])


def decode(topic: str, id: int, fields: dict[bytes, bytes]) -> Message:
    """The message a stream entry stores."""
    event = fields.get(b"e", b"").decode() or None
    data = fields.get(b"d", b"").decode("utf-8", errors="replace")
    try:
        ts = float(fields.get(b"t", b"0"))
    except ValueError:
        ts = 0.0
    return Message.build(id, topic, event, data, ts)


class StreamReader:
    """The process's one reader task, and what it has read so far."""

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker
        self.last = 0  # the highest id delivered to this process's subscribers
        self.last_is_guess = False  # started while Redis was down: `last` is this machine's clock
        self.own: dict[int, Message] = {}  # published here, not yet read back: built once
        self.ring_from: dict[str, int] = {}  # per topic: the ring holds every stored id above this
        self._settling = asyncio.Lock()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._streams: dict[bytes, str] = {}
        self._client: aioredis.Redis | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self, loader: aioredis.Redis, client: aioredis.Redis) -> None:
        """Load the rings through `loader`, then read for ever on `client` (a connection of its own)."""
        broker = self.broker
        self._client = client
        self._streams = {broker.stream_key(name).encode(): name for name in broker.topics}
        try:
            await self.load_rings(loader)
            broker._healthy = True
        except (RedisError, OSError) as exc:
            # Start degraded rather than not at all: the reader keeps trying in the background.
            log.warning("cannot reach Redis at %s (%s); starting degraded", broker.where, type(exc).__name__)
            self.last = time.time_ns() // 1000
            self.last_is_guess = True  # the reader takes Redis's own counter once it answers
        self.task = asyncio.create_task(self._read_forever(), name="redis-reader")

    async def load_rings(self, client: aioredis.Redis) -> None:
        """Take Redis's id counter and fill each topic's ring with its stream, in one transaction
        (so the reader, starting after that id, neither skips nor repeats an event)."""
        broker = self.broker
        async with client.pipeline(transaction=True) as pipe:
            pipe.get(broker.id_key)
            for name, state in broker.topics.items():
                pipe.xrevrange(broker.stream_key(name), count=state.history.maxlen)
            last, *streams = await pipe.execute()
        self.last = int(last or 0)
        for (name, state), entries in zip(broker.topics.items(), streams, strict=True):
            state.history.extend(decode(name, entry_id(i), fields) for i, fields in reversed(entries))
            full = len(entries) == state.history.maxlen
            # A full ring may have older neighbours in Redis (a longer `history` elsewhere).
            self.ring_from[name] = state.history[0].id - 1 if full else 0

    async def add_topic(self, name: str, client: aioredis.Redis) -> None:
        """Read topic `name` too (a reload added it): fill its ring through `client` with what is
        stored up to the last id delivered, then read on from there with its stream among the rest."""
        broker = self.broker
        state = broker.topics[name]
        if self.task is not None:
            await cancel_and_wait([self.task])
        try:
            entries = await client.xrevrange(broker.stream_key(name), count=state.history.maxlen)
        except (RedisError, OSError) as exc:
            log.warning("topic %r added, but its history could not be read (%s)", name, type(exc).__name__)
            entries = []
        kept = [decode(name, entry_id(i), fields) for i, fields in reversed(entries)]
        state.history.extend(message for message in kept if message.id <= self.last)
        full = len(entries) == state.history.maxlen
        self.ring_from[name] = state.history[0].id - 1 if full and state.history else 0
        self._streams[broker.stream_key(name).encode()] = name
        self.task = asyncio.create_task(self._read_forever(), name="redis-reader")

    def remove_topic(self, name: str) -> None:
        """Stop reading topic `name` (a reload removed it)."""
        self._streams.pop(self.broker.stream_key(name).encode(), None)
        self.ring_from.pop(name, None)

    async def settle_last(self, client: aioredis.Redis) -> None:
        """After a start while Redis was down, `last` is this machine's clock and the rings are
        empty: load them and Redis's id counter before anything is stored or read."""
        if self.last_is_guess:
            async with self._settling:
                if self.last_is_guess:
                    await self.load_rings(client)
                    self.last_is_guess = False

    async def reached(self, target: int) -> None:
        """Wait (a while at most) until the reader has delivered id `target`."""
        if self.last >= target:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((target, waiter))
        try:  # a reader that is behind makes the stream wait, then go on: the rest comes live
            await asyncio.wait([waiter], timeout=CATCH_UP_TIMEOUT)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove((target, waiter))

    async def _read_forever(self) -> None:
        """Deliver every topic's new events in id order, for ever."""
        broker, client = self.broker, self._client
        assert client is not None
        failures = 0
        while True:
            try:
                await self.settle_last(client)
                after = f"{self.last}-0"
                reply = await client.xread({key: after for key in self._streams}, block=BLOCK_MS)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if failures == 0:
                    log.warning(
                        "lost Redis at %s (%s); retrying with backoff, streams stay open",
                        broker.where,
                        type(exc).__name__,
                    )
                broker._healthy = False
                failures += 1
                await asyncio.sleep(RECONNECT.delay(failures))
                continue
            if failures:
                failures = 0
                log.info("reconnected to Redis at %s; resuming after event %d", broker.where, self.last)
                # Pooled connections to the old server would fail their next command.
                for other in broker._clients:
                    if other is not client:
                        await other.connection_pool.disconnect(inuse_connections=False)
            broker._healthy = True
            if reply:
                self._deliver_batch(reply)

    def _deliver_batch(self, reply: list) -> None:
        own, topics = self.own, self.broker.topics
        batch: list[Message] = []
        for key, entries in reply:
            topic = self._streams.get(key)
            if topic is None:
                continue  # a topic a reload removed while this read was under way
            if entries and len(entries) >= (topics[topic].history.maxlen or 0):
                # A full stream's worth of news: older ones may have been trimmed before this read,
                # so the ring cannot answer for ids below these (Redis, and its evicted id, can).
                floor = entry_id(entries[0][0]) - 1
                self.ring_from[topic] = max(self.ring_from.get(topic, 0), floor)
            for raw_id, fields in entries:
                id = entry_id(raw_id)
                batch.append(own.pop(id, None) or decode(topic, id, fields))
        batch.sort(key=lambda m: m.id)
        for message in batch:
            if message.id > self.last:
                self.last = message.id
                self.broker.deliver(message)
        if len(own) > 1024:  # published here but trimmed before the reader saw them
            for id in [i for i in own if i <= self.last]:
                del own[id]
        if self._waiters:
            for target, waiter in self._waiters:
                if target <= self.last and not waiter.done():
                    waiter.set_result(None)
