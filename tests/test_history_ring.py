"""The Redis broker's local ring: streams open from it, older ids come from Redis in one shared
read, and the seams (Redis / ring / live) lose and repeat nothing while publishers run."""

from __future__ import annotations

import asyncio

from dashboard.broker import from_url
from dashboard.broker.redis import RedisBroker
from dashboard.events import Event
from dashboard.web.sink import StreamSink
from tests.support import REDIS_URL, run_async
from tests.test_broker_contract import nothing_more, take


def brokers(prefix: str, ring: int) -> tuple[RedisBroker, RedisBroker]:
    """A writer keeping 1000 events per topic in Redis, and a reader whose rings keep `ring`."""
    writer = from_url(REDIS_URL, history=1000, prefix=prefix)
    reader = from_url(REDIS_URL, history=ring, prefix=prefix)
    for broker in (writer, reader):
        broker.add_topic("a")
        broker.add_topic("b")
    assert isinstance(writer, RedisBroker) and isinstance(reader, RedisBroker)
    return writer, reader


def count_history_reads(broker: RedisBroker) -> list[tuple]:
    """Record each XRANGE the broker sends for history (it still goes to Redis)."""
    calls: list[tuple] = []
    assert broker._history_client is not None
    xrange = broker._history_client.xrange

    async def counted(*args, **kwargs):
        calls.append(args)
        return await xrange(*args, **kwargs)

    broker._history_client.xrange = counted
    return calls


def test_resumes_older_than_the_ring_lose_and_repeat_nothing_under_concurrent_publishes(redis_prefix):
    async def scenario():
        writer, reader = brokers(redis_prefix, ring=5)
        await writer.connect()
        await reader.connect()
        try:
            ids = [(await writer.publish("ab"[i % 2], Event(i))).id for i in range(40)]
            start = ids[9]  # 30 events back: far older than the reader's rings of 5
            published = 0
            publishing = True

            async def publisher(k: int) -> None:
                nonlocal published
                while publishing and published < 600:  # within the subscribers' backlog
                    await writer.publish("ab"[(published + k) % 2], Event(published))
                    published += 1
                    await asyncio.sleep(0.002)

            running = [asyncio.create_task(publisher(k)) for k in range(4)]
            subs = []
            while len(subs) < 60:
                subs.append(await reader.subscribe(["a", "b"], start, sink=StreamSink(mux=True)))
                subs.append(await reader.subscribe(["a"], start, sink=StreamSink()))
                await asyncio.sleep(0.002)
            publishing = False
            await asyncio.gather(*running)
            stored = [*await writer.read_history("a", start), *await writer.read_history("b", start)]
            expected = sorted(m.id for m in stored)
            expected_a = sorted(m.id for m in stored if m.topic == "a")
            assert len(expected) == 30 + published and published > 50
            for sub in subs:
                want = expected if sub.sink.mux else expected_a
                assert [f[0] for f in await take(sub, len(want))] == want
                await nothing_more(sub, 0.05)
        finally:
            await reader.disconnect()
            await writer.disconnect()

    run_async(scenario())


def test_streams_open_from_the_ring_and_share_one_read_for_older_ids(redis_prefix):
    async def scenario():
        writer, reader = brokers(redis_prefix, ring=10)
        ids = []
        await writer.connect()
        try:
            ids = [(await writer.publish("a", Event(i))).id for i in range(30)]
        finally:
            await writer.disconnect()
        await reader.connect()  # its rings load the newest 10 of topic a
        try:
            reads = count_history_reads(reader)
            within = await asyncio.gather(
                *(reader.subscribe(["a"], ids[25], sink=StreamSink()) for _ in range(200))
            )
            fresh = await asyncio.gather(
                *(reader.subscribe(["a"], replay=3, sink=StreamSink()) for _ in range(200))
            )
            assert reads == [], "streams resuming within the ring must not read Redis"
            older = await asyncio.gather(
                *(reader.subscribe(["a"], ids[4], sink=StreamSink()) for _ in range(200))
            )
            assert len(reads) == 1, f"200 streams wanting the same older range: {len(reads)} reads"
            for sub in within:
                assert [f[0] for f in await take(sub, 4)] == ids[26:]
            for sub in fresh:
                assert [f[0] for f in await take(sub, 3)] == ids[27:]
            for sub in older:
                assert [f[0] for f in await take(sub, 25)] == ids[5:]
        finally:
            await reader.disconnect()

    run_async(scenario())
