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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from dashboard.backoff import Backoff
from dashboard.broker import (
    DAY,
    LIMIT_WINDOW,
    SPEND_DAYS,
    Broker,
    Lease,
    Limits,
    Refusal,
    Reservation,
    check_requested_id,
    fence,
    parse_spend,
    spend_increments,
)
from dashboard.errors import BrokerUnavailable, InvalidEvent, LeadershipLost
from dashboard.events import Event, Message, encode_data, event_type
from dashboard.tasks import cancel_and_wait

log = logging.getLogger("dashboard.broker.redis")

RECONNECT = Backoff(0.1, 5.0)  # seconds between tries to reach Redis again, doubled, jittered

BLOCK_MS = 5000  # how long one XREAD waits for news before it is sent again
CATCH_UP_TIMEOUT = 5.0  # how long a new subscriber waits for the reader to reach this process's writes
HISTORY_CONNECTIONS = 4  # connections for history older than the ring; more readers wait their turn
HISTORY_TIMEOUT = 30.0  # a slow history read makes its streams wait this long before they fail
MAX_ID = 2**53  # ids are Lua numbers (doubles) in the script

# KEYS: id counter, topic stream, topic lease, the topic's newest evicted id.
# ARGV: maxlen, floor id, requested id or "", lease token or "", lease ttl ms, event, data, ts.
PUBLISH = """
local token = ARGV[4]
if token ~= '' then
  local holder = redis.call('GET', KEYS[3])
  if holder == false then
    redis.call('SET', KEYS[3], token, 'PX', ARGV[5])
  elseif holder ~= token then
    return redis.error_reply('FENCED')
  end
end
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local id
if ARGV[3] ~= '' then
  id = tonumber(ARGV[3])
  if id <= last then
    return redis.error_reply('IDORDER ' .. string.format('%.0f', last))
  end
else
  local now = redis.call('TIME')
  id = math.max(last + 1, tonumber(now[1]) * 1000000 + tonumber(now[2]), tonumber(ARGV[2]) + 1)
end
local sid = string.format('%.0f', id)
redis.call('SET', KEYS[1], sid)
local excess = redis.call('XLEN', KEYS[2]) + 1 - tonumber(ARGV[1])
if excess > 0 then
  local evicted = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', excess)
  redis.call('SET', KEYS[4], evicted[#evicted][1])
end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[1], sid .. '-0', 'e', ARGV[6], 'd', ARGV[7], 't', ARGV[8])
return sid
"""

# Keep the lease while it is ours; take it back when it expired and nobody took it meanwhile
# (after a Redis restart, say): the fence only has to exclude a *different* holder.
RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# The same admission as Broker.reserve, in one step for every instance: the sliding window is a
# hash of one-second buckets (`r<second>` requests, `t<second>` tokens), the day's spend a hash
# of counters (see parse_spend). Times are Redis's own, so instances agree on the window and day.
# KEYS: the account's window, the spend key prefix (the day is appended).
# ARGV: account, rpm, tpm, daily nano-dollars ('' for no limit), tokens, nano-dollars, window, days.
RESERVE = """
local t = redis.call('TIME')
local second = tonumber(t[1])
local now = second + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[7])
local day = math.floor(second / 86400)
local daykey = KEYS[2] .. day
local account, tokens, nusd = ARGV[1], tonumber(ARGV[5]), tonumber(ARGV[6])
local buckets, seconds, requests, used = {}, {}, 0, 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local s = tonumber(string.sub(fields[i], 2))
  local n = tonumber(fields[i + 1])
  if s <= second - window then
    redis.call('HDEL', KEYS[1], fields[i])
  else
    if buckets[s] == nil then
      buckets[s] = {0, 0}
      table.insert(seconds, s)
    end
    if string.sub(fields[i], 1, 1) == 'r' then
      buckets[s][1] = buckets[s][1] + n
      requests = requests + n
    else
      buckets[s][2] = buckets[s][2] + n
      used = used + n
    end
  end
end
table.sort(seconds)
local function wait(index, need)
  local freed = 0
  for _, s in ipairs(seconds) do
    freed = freed + buckets[s][index]
    if freed >= need then
      return math.max(1, math.ceil(s + window - now))
    end
  end
  return window
end
if ARGV[4] ~= '' then
  local budget = tonumber(ARGV[4])
  local spent = tonumber(redis.call('HGET', daykey, 'k|' .. account .. '|nusd') or '0')
  local held = tonumber(redis.call('HGET', daykey, 'k|' .. account .. '|reserved') or '0')
  if spent + held + nusd > budget then
    if held > 0 and spent + nusd <= budget then
      return {'budget', 1}
    end
    return {'budget', math.max(1, math.ceil((day + 1) * 86400 - now))}
  end
end
if ARGV[2] ~= '' and requests + 1 > tonumber(ARGV[2]) then
  return {'rpm', wait(1, requests + 1 - tonumber(ARGV[2]))}
end
if ARGV[3] ~= '' and used + tokens > tonumber(ARGV[3]) then
  return {'tpm', wait(2, used + tokens - tonumber(ARGV[3]))}
end
redis.call('HINCRBY', KEYS[1], 'r' .. second, 1)
redis.call('HINCRBY', KEYS[1], 't' .. second, ARGV[5])
redis.call('EXPIRE', KEYS[1], window * 2)
redis.call('HINCRBY', daykey, 'k|' .. account .. '|reserved', ARGV[6])
redis.call('EXPIRE', daykey, 86400 * tonumber(ARGV[8]))
return {'ok', second, day}
"""

# KEYS: the account's window, the day's spend. ARGV: the reservation's second, the tokens to add
# to its bucket (while the bucket is in the window), days kept, then counter/increment pairs.
SETTLE = """
if redis.call('HEXISTS', KEYS[1], 't' .. ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 't' .. ARGV[1], ARGV[2])
end
for i = 4, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[2], 86400 * tonumber(ARGV[3]))
return redis.call('HGETALL', KEYS[2])
"""


def _counters(flat: list[bytes]) -> dict[str, int]:
    return {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}


def _entry_id(raw: bytes) -> int:
    return int(raw.split(b"-", 1)[0])


class RedisBroker(Broker):
    """Events in Redis Streams (`<prefix>:topic:<name>`), ids from `<prefix>:id`, leases in
    `<prefix>:lease:<name>`. See the module docs for how order and resume hold across instances."""

    shared = True

    @classmethod
    def from_url(cls, url: str, *, history: int, prefix: str, lease_ttl: float) -> RedisBroker:
        return cls(url, history=history, prefix=prefix, lease_ttl=lease_ttl)

    def __init__(self, url: str, *, prefix: str = "dashboard", lease_ttl: float = 5.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.url = url
        self.prefix = prefix
        self.lease_ttl = lease_ttl
        parts = urlsplit(url)
        # For messages: never the password.
        self.where = f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}{parts.path or ''}"
        self._client: aioredis.Redis | None = None  # publishing and claims
        self._lease_client: aioredis.Redis | None = None
        self._history_client: aioredis.Redis | None = None  # history older than the rings
        self._last_is_guess = False
        self._settling = asyncio.Lock()
        self._reader_client: aioredis.Redis | None = None
        self._reader: asyncio.Task[None] | None = None
        self._renewers: dict[Lease, asyncio.Task[None]] = {}
        self._healthy = False
        self._last = 0  # the highest id delivered to this process's subscribers
        self._own: dict[int, Message] = {}  # published here, not yet read back: built once
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._stream_topics: dict[bytes, str] = {}
        self._ring_from: dict[str, int] = {}  # per topic: the ring holds every stored id above this
        self._older_reads: dict[tuple[str, int, int], asyncio.Task[list[Message]]] = {}

    # -- keys ----------------------------------------------------------------------------------
    @property
    def id_key(self) -> str:
        return f"{self.prefix}:id"

    def stream_key(self, topic: str) -> str:
        return f"{self.prefix}:topic:{topic}"

    def evicted_key(self, topic: str) -> str:
        return f"{self.prefix}:evicted:{topic}"

    def lease_key(self, topic: str) -> str:
        return f"{self.prefix}:lease:{topic}"

    def claim_key(self, key: str) -> str:
        return f"{self.prefix}:claim:{key}"

    @property
    def presence_channel(self) -> str:
        return f"{self.prefix}:presence"

    def window_key(self, account: str) -> str:
        return f"{self.prefix}:window:{account}"

    @property
    def spend_prefix(self) -> str:
        return f"{self.prefix}:spend:"

    # -- connection ----------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return self._healthy

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
        self._renew_script = self._lease_client.register_script(RENEW)
        self._release_script = self._lease_client.register_script(RELEASE)
        self._reserve_script = self._client.register_script(RESERVE)
        self._settle_script = self._client.register_script(SETTLE)
        self._stream_topics = {self.stream_key(name).encode(): name for name in self.topics}
        try:
            await self._load_rings(self._client)
            self._healthy = True
        except (RedisError, OSError) as exc:
            # Start degraded rather than not at all: the reader keeps trying in the background.
            log.warning("cannot reach Redis at %s (%s); starting degraded", self.where, type(exc).__name__)
            self._last = time.time_ns() // 1000
            self._last_is_guess = True  # the reader takes Redis's own counter once it answers
        self._reader = asyncio.create_task(self._read_forever(), name="redis-reader")

    async def disconnect(self) -> None:
        await super().disconnect()
        tasks = [t for t in (self._reader, *self._renewers.values()) if t is not None]
        await cancel_and_wait([*tasks, *self._older_reads.values()])
        self._renewers.clear()
        for client in self._clients:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
        self._healthy = False

    def _unavailable(self, doing: str, exc: BaseException) -> BrokerUnavailable:
        self._healthy = False
        reason = type(exc).__name__
        return BrokerUnavailable(f"cannot {doing}: Redis at {self.where} is unreachable ({reason})")

    # -- events --------------------------------------------------------------------------------
    async def _load_rings(self, client: aioredis.Redis) -> None:
        """Take Redis's id counter and fill each topic's ring with its stream, in one transaction
        (so the reader, starting after that id, neither skips nor repeats an event)."""
        async with client.pipeline(transaction=True) as pipe:
            pipe.get(self.id_key)
            for name, state in self.topics.items():
                pipe.xrevrange(self.stream_key(name), count=state.history.maxlen)
            last, *streams = await pipe.execute()
        self._last = int(last or 0)
        for (name, state), entries in zip(self.topics.items(), streams, strict=True):
            state.history.extend(self._decode(name, _entry_id(i), fields) for i, fields in reversed(entries))
            full = len(entries) == state.history.maxlen
            # A full ring may have older neighbours in Redis (a longer `history` elsewhere).
            self._ring_from[name] = state.history[0].id - 1 if full else 0

    async def _settle_last(self, client: aioredis.Redis) -> None:
        """After a start while Redis was down, `_last` is this machine's clock and the rings are
        empty: load them and Redis's id counter before anything is stored or read."""
        if self._last_is_guess:
            async with self._settling:
                if self._last_is_guess:
                    await self._load_rings(client)
                    self._last_is_guess = False

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
            await self._settle_last(self._client)
            sid = await self._publish_script(
                keys=[self.id_key, self.stream_key(topic), self.lease_key(topic), self.evicted_key(topic)],
                args=[
                    state.history.maxlen or self.default_history,
                    self._last,
                    requested,
                    token,
                    int(self.lease_ttl * 1000),
                    kind,
                    data,
                    repr(ts),
                ],
            )
        except ResponseError as exc:
            reason = str(exc)
            if reason.startswith("FENCED"):
                assert lease is not None
                self._lose(lease, "another instance holds its lease")
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
        if message.id > self._last:
            self._own[message.id] = message
        return message

    async def read_history(self, topic: str, after_id: int | None) -> list[Message]:
        state = self.topic(topic)
        assert self._client is not None, "broker not connected"
        try:
            await self._settle_last(self._client)
        except (RedisError, OSError) as exc:
            raise self._unavailable(f"read the history of {topic!r}", exc) from exc
        if self._own:  # read your own writes: what this process stored is in its rings
            await self._reader_reached(max(self._own))
        start, older = after_id, []
        # Ids at or below the ring's floor are asked of Redis; the floor may rise meanwhile.
        while start is not None and start < (floor := self._ring_from.get(topic, 0)):
            older += await self._read_older(topic, start, floor)
            start = floor
        return older + state.after(start)

    def deliver(self, message: Message) -> None:
        history = self.topics[message.topic].history
        if len(history) == history.maxlen:  # the ring drops its oldest: Redis has to answer for it
            self._ring_from[message.topic] = history[0].id
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
        return [self._decode(topic, _entry_id(entry_id), fields) for entry_id, fields in entries]

    # A resume is checked here without a Redis trip when this process knows the answer; otherwise
    # on the history connections, which make a storm of streams wait, never the publisher.
    async def evicted_id(self, topic: str, after: int) -> int:
        if after >= self._ring_from.get(topic, 0):
            return 0  # the ring holds every stored id above `after`: nothing was lost
        assert self._history_client is not None, "broker not connected"
        try:
            raw = await self._history_client.get(self.evicted_key(topic))
        except (RedisError, OSError) as exc:
            raise self._unavailable(f"read the history of {topic!r}", exc) from exc
        evicted = _entry_id(raw) if raw else 0
        return evicted if evicted > after else 0

    async def gave(self, id: int) -> bool:
        if id <= self._last:
            return True
        assert self._history_client is not None, "broker not connected"
        try:
            return id <= int(await self._history_client.get(self.id_key) or 0)
        except (RedisError, OSError) as exc:
            raise self._unavailable("read the newest event id", exc) from exc

    def _decode(self, topic: str, id: int, fields: dict[bytes, bytes]) -> Message:
        event = fields.get(b"e", b"").decode() or None
        data = fields.get(b"d", b"").decode("utf-8", errors="replace")
        try:
            ts = float(fields.get(b"t", b"0"))
        except ValueError:
            ts = 0.0
        return Message.build(id, topic, event, data, ts)

    async def _reader_reached(self, target: int) -> None:
        if self._last >= target:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((target, waiter))
        try:  # a reader that is behind makes the stream wait, then go on: the rest comes live
            await asyncio.wait([waiter], timeout=CATCH_UP_TIMEOUT)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove((target, waiter))

    async def _read_forever(self) -> None:
        """The process's one reader: deliver every topic's new events in id order, for ever."""
        assert self._reader_client is not None
        failures = 0
        while True:
            try:
                await self._settle_last(self._reader_client)
                after = f"{self._last}-0"
                reply = await self._reader_client.xread(
                    {key: after for key in self._stream_topics}, block=BLOCK_MS
                )
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if failures == 0:
                    log.warning(
                        "lost Redis at %s (%s); retrying with backoff, streams stay open",
                        self.where,
                        type(exc).__name__,
                    )
                self._healthy = False
                failures += 1
                await asyncio.sleep(RECONNECT.delay(failures))
                continue
            if failures:
                failures = 0
                log.info("reconnected to Redis at %s; resuming after event %d", self.where, self._last)
                # Pooled connections to the old server would fail their next command.
                for client in self._clients:
                    if client is not self._reader_client:
                        await client.connection_pool.disconnect(inuse_connections=False)
            self._healthy = True
            if reply:
                self._deliver_batch(reply)

    def _deliver_batch(self, reply: list) -> None:
        own = self._own
        batch: list[Message] = []
        for key, entries in reply:
            topic = self._stream_topics[key]
            if entries and len(entries) >= (self.topics[topic].history.maxlen or 0):
                # A full stream's worth of news: older ones may have been trimmed before this read,
                # so the ring cannot answer for ids below these (Redis, and its evicted id, can).
                floor = _entry_id(entries[0][0]) - 1
                self._ring_from[topic] = max(self._ring_from.get(topic, 0), floor)
            for entry_id, fields in entries:
                id = _entry_id(entry_id)
                batch.append(own.pop(id, None) or self._decode(topic, id, fields))
        batch.sort(key=lambda m: m.id)
        for message in batch:
            if message.id > self._last:
                self._last = message.id
                self.deliver(message)
        if len(own) > 1024:  # published here but trimmed before the reader saw them
            for id in [i for i in own if i <= self._last]:
                del own[id]
        if self._waiters:
            for target, waiter in self._waiters:
                if target <= self._last and not waiter.done():
                    waiter.set_result(None)

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

    # -- leadership ----------------------------------------------------------------------------
    async def acquire_lease(self, topic: str) -> Lease:
        """Wait until this instance holds `topic`'s lease, polling while another one holds it."""
        assert self._lease_client is not None, "broker not connected"
        lease = Lease(topic, uuid.uuid4().hex)
        ttl_ms = int(self.lease_ttl * 1000)
        poll = min(1.0, self.lease_ttl / 4)
        while True:
            attempted = time.monotonic()
            try:
                if await self._lease_client.set(self.lease_key(topic), lease.token, nx=True, px=ttl_ms):
                    break
            except (RedisError, OSError):
                pass  # the reader reports the outage; keep trying
            await asyncio.sleep(poll)
        log.info("topic %r: this instance leads its feed now", topic)
        self._renewers[lease] = asyncio.create_task(self._renew(lease, attempted), name=f"lease:{topic}")
        return lease

    async def _renew(self, lease: Lease, renewed_at: float) -> None:
        assert self._lease_client is not None
        key, ttl_ms = self.lease_key(lease.topic), int(self.lease_ttl * 1000)
        while not lease.lost.is_set():
            await asyncio.sleep(self.lease_ttl / 3)
            sent = time.monotonic()
            try:
                kept = await self._renew_script(keys=[key], args=[lease.token, ttl_ms])
            except (RedisError, OSError):
                if time.monotonic() - renewed_at >= self.lease_ttl:
                    self._lose(lease, "it could not be renewed in time")
                continue
            if kept:
                renewed_at = sent
            else:
                self._lose(lease, "another instance holds it")

    def _lose(self, lease: Lease, why: str) -> None:
        if not lease.lost.is_set():
            log.warning("topic %r: lost the lease of its feed (%s); standing by", lease.topic, why)
            lease.lost.set()
        renewer = self._renewers.pop(lease, None)
        if renewer is not None and renewer is not asyncio.current_task():
            renewer.cancel()

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

    async def reserve(
        self, account: str, model: str, limits: Limits, tokens: int, nusd: int
    ) -> Reservation | Refusal:
        assert self._client is not None, "broker not connected"
        args = [
            account,
            *("" if n is None else n for n in (limits.rpm, limits.tpm, limits.daily_nusd)),
            tokens,
            nusd,
            LIMIT_WINDOW,
            SPEND_DAYS,
        ]
        try:
            reply = await self._reserve_script(keys=[self.window_key(account), self.spend_prefix], args=args)
        except (RedisError, OSError) as exc:
            raise self._unavailable("check the key's limits", exc) from exc
        if reply[0] != b"ok":
            return Refusal(reply[0].decode(), int(reply[1]))
        return Reservation(account, model, tokens, nusd, int(reply[1]), int(reply[2]))

    async def settle(
        self, res: Reservation, prompt_tokens: int, completion_tokens: int, nusd: int
    ) -> dict[str, dict[str, dict[str, int]]]:
        assert self._client is not None, "broker not connected"
        args: list[Any] = [res.second, prompt_tokens + completion_tokens - res.tokens, SPEND_DAYS]
        for name, n in spend_increments(res, prompt_tokens, completion_tokens, nusd):
            args += [name, n]
        keys = [self.window_key(res.account), f"{self.spend_prefix}{res.day}"]
        try:
            reply = await self._settle_script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise self._unavailable("settle a request's spend", exc) from exc
        return parse_spend(_counters(reply))

    async def spend(self, day: int | None = None) -> dict[str, dict[str, dict[str, int]]]:
        assert self._client is not None, "broker not connected"
        day = int(time.time()) // DAY if day is None else day
        try:
            reply = await self._client.hgetall(f"{self.spend_prefix}{day}")
        except (RedisError, OSError) as exc:
            raise self._unavailable("read the day's spend", exc) from exc
        return parse_spend({k.decode(): int(v) for k, v in reply.items()})

    async def release_lease(self, lease: Lease) -> None:
        renewer = self._renewers.pop(lease, None)
        if renewer is not None:
            renewer.cancel()
        if lease.lost.is_set() or self._lease_client is None:
            return
        lease.lost.set()
        with contextlib.suppress(RedisError, OSError, TimeoutError):  # else it expires by itself
            await asyncio.wait_for(
                self._release_script(keys=[self.lease_key(lease.topic)], args=[lease.token]), 1.0
            )
