"""One suite for every backend: the broker's contract, checked on memory://, on sqlite:// (a file of
each broker's own) and on a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from dashboard.broker import Broker, Subscription, fence, from_url, missing_parts
from dashboard.errors import LeadershipLost, UnknownTopic
from dashboard.events import Event
from dashboard.relay.ledger import Ledger, Limits, Refusal, Reservation
from dashboard.web.sink import StreamSink
from tests.support import REDIS_URL

TOPICS = {"a": None, "b": None, "short": 3}


# Another backend's URLs, separated by spaces: the same suite checks it (docs/EXTENDING.md).
OTHER_URLS = os.environ.get("DASHBOARD_BROKER_URLS", "").split()


@pytest.fixture(params=["memory://", "sqlite", "redis", *OTHER_URLS])
def make_broker(request, tmp_path) -> Callable[[], Broker]:
    if request.param == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        return lambda: from_url(REDIS_URL, history=100, prefix=prefix)
    if request.param == "sqlite":
        files = iter(range(100))  # two brokers at once are two processes: each has its own file
        return lambda: from_url(f"sqlite:///{tmp_path}/broker{next(files)}.db", history=100)
    # A prefix of the test's own: a shared backend among them starts each test empty.
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    return lambda: from_url(request.param, history=100, prefix=prefix)


@contextlib.asynccontextmanager
async def connected(make_broker: Callable[[], Broker]) -> AsyncIterator[Broker]:
    broker = make_broker()
    for name, history in TOPICS.items():
        broker.add_topic(name, history)
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.disconnect()


def parse_frames(chunk: bytes) -> list[tuple[int, str, str]]:
    """(id, event, data) of each frame in a chunk."""
    frames = []
    for block in chunk.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "id" in fields:
            frames.append((int(fields["id"]), fields.get("event", "message"), fields.get("data", "")))
    return frames


async def take(sub: Subscription, count: int, timeout: float = 10.0) -> list[tuple[int, str, str]]:
    """The next `count` frames of a subscription."""
    frames: list[tuple[int, str, str]] = []
    async with asyncio.timeout(timeout):
        while len(frames) < count:
            chunk = await sub.sink.next_chunk()
            assert chunk is not None, f"subscription closed after {frames}"
            frames.extend(parse_frames(chunk))
    return frames


async def nothing_more(sub: Subscription, wait: float = 0.3) -> None:
    try:
        chunk = await asyncio.wait_for(sub.sink.next_chunk(), wait)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected frames: {chunk!r}")


def test_the_backend_implements_every_part_of_the_contract(make_broker):
    """What the registry checks before a server starts with it: nothing is missing."""
    assert missing_parts(type(make_broker())) == []


def test_ids_grow_across_topics_and_history_keeps_what_publish_returned(make_broker):
    async def scenario():
        async with connected(make_broker) as broker:
            published = [await broker.publish(t, Event({"n": i})) for i, t in enumerate("abab")]
            ids = [m.id for m in published]
            assert ids == sorted(ids) and len(set(ids)) == 4, ids
            history = await broker.read_history("a", None)
            assert [(m.id, m.data) for m in history] == [(ids[0], '{"n":0}'), (ids[2], '{"n":2}')]
            assert [m.id for m in await broker.read_history("b", ids[1])] == [ids[3]]
            assert await broker.read_history("b", ids[3]) == []

    asyncio.run(scenario())


def test_live_subscriber_gets_each_event_once_in_order(make_broker):
    async def scenario():
        async with connected(make_broker) as broker:
            sub = await broker.subscribe(["a"], sink=StreamSink())
            ids = [(await broker.publish("a", Event({"n": i}))).id for i in range(5)]
            frames = await take(sub, 5)
            assert [f[0] for f in frames] == ids
            assert [f[2] for f in frames] == [f'{{"n":{i}}}' for i in range(5)]
            await nothing_more(sub)
            broker.unsubscribe(sub)

    asyncio.run(scenario())


def test_resume_after_last_id_replays_the_rest_then_goes_live(make_broker):
    async def scenario():
        async with connected(make_broker) as broker:
            ids = [(await broker.publish("a", Event(i))).id for i in range(5)]
            sub = await broker.subscribe(["a"], ids[1], sink=StreamSink())
            assert [f[0] for f in await take(sub, 3)] == ids[2:]
            later = [(await broker.publish("a", Event(i))).id for i in range(5, 7)]
            assert [f[0] for f in await take(sub, 2)] == later
            await nothing_more(sub)

    asyncio.run(scenario())


def test_multiplexed_resume_keeps_one_order_across_topics(make_broker):
    async def scenario():
        async with connected(make_broker) as broker:
            published = [
                await broker.publish(t, Event(i, event="tick" if t == "b" else None))
                for i, t in enumerate("ababba")
            ]
            sub = await broker.subscribe(["a", "b"], published[0].id, sink=StreamSink(mux=True))
            frames = await take(sub, 5)
            assert [(f[0], f[1]) for f in frames] == [
                (m.id, "a" if m.topic == "a" else "b:tick") for m in published[1:]
            ]
            await nothing_more(sub)

    asyncio.run(scenario())


def test_replay_count_gives_each_topics_newest_events_first(make_broker):
    async def scenario():
        async with connected(make_broker) as broker:
            ids = [(await broker.publish(t, Event(i))).id for i, t in enumerate("aabab")]
            sub = await broker.subscribe(["a", "b"], sink=StreamSink(mux=True), replay=2)
            # a's last two (ids 1 and 3) and b's (2 and 4), in id order
            assert [f[0] for f in await take(sub, 4)] == ids[1:]
            await nothing_more(sub)
            fresh = await broker.subscribe(["a"], replay=0, sink=StreamSink())
            await nothing_more(fresh)

    asyncio.run(scenario())


def test_history_is_trimmed_to_the_topic_history(make_broker):
    async def scenario():
        async with connected(make_broker) as broker:
            ids = [(await broker.publish("short", Event(i))).id for i in range(6)]
            assert [m.id for m in await broker.read_history("short", None)] == ids[-3:]

    asyncio.run(scenario())


def test_requested_ids_must_keep_growing(make_broker):
    async def scenario():
        async with connected(make_broker) as broker:
            first = await broker.publish("a", Event(0))
            wanted = first.id + 1000
            assert (await broker.publish("a", Event(1, id=str(wanted)))).id == wanted
            with pytest.raises(ValueError, match="not above the last id"):
                await broker.publish("b", Event(2, id=str(wanted)))
            with pytest.raises(ValueError, match="integer"):
                await broker.publish("b", Event(2, id="abc"))
            assert (await broker.publish("b", Event(3))).id > wanted

    asyncio.run(scenario())


def test_unknown_topic_is_refused(make_broker):
    async def scenario():
        async with connected(make_broker) as broker:
            with pytest.raises(UnknownTopic):
                await broker.publish("nope", Event(1))
            with pytest.raises(UnknownTopic):
                await broker.subscribe(["a", "nope"], sink=StreamSink())

    asyncio.run(scenario())


def test_subscribing_while_publishing_loses_and_repeats_nothing(make_broker):
    """Multiplexed resumes racing busy publishers get exactly what history holds after them."""

    async def scenario():
        async with connected(make_broker) as broker:
            start = await broker.publish("a", Event("start"))
            per_task, tasks = 40, 4

            async def publisher(k: int) -> None:
                for i in range(per_task):
                    await broker.publish("ab"[(i + k) % 2], Event(i))

            running = [asyncio.create_task(publisher(k)) for k in range(tasks)]
            subs = []
            while not all(t.done() for t in running):
                await asyncio.sleep(0)  # the memory broker's subscribe never waits
                if len(subs) < 20:  # a backend whose publish waits would subscribe thousands
                    subs.append(await broker.subscribe(["a", "b"], start.id, sink=StreamSink(mux=True)))
            await asyncio.gather(*running)
            stored = [*await broker.read_history("a", start.id), *await broker.read_history("b", start.id)]
            expected = sorted(m.id for m in stored)
            assert len(expected) == per_task * tasks
            for sub in subs:
                assert [f[0] for f in await take(sub, len(expected))] == expected
                await nothing_more(sub, 0.05)

    asyncio.run(scenario())


def test_a_free_lease_is_taken_at_once_and_released(make_broker):
    async def scenario():
        async with connected(make_broker) as broker:
            async with asyncio.timeout(2):
                lease = await broker.acquire_lease("a")
            assert not lease.lost.is_set()
            await broker.release_lease(lease)
            assert lease.lost.is_set()
            async with asyncio.timeout(2):
                again = await broker.acquire_lease("a")
            await broker.release_lease(again)

    asyncio.run(scenario())


def test_a_lease_is_one_instances_and_a_publish_under_a_lost_one_is_refused(make_broker):
    """A shared backend hands a topic's lease to one instance at a time and fences what the former
    holder publishes under it; a process-local one leads every feed of its own process at once."""

    async def scenario():
        async with connected(make_broker) as one, connected(make_broker) as two:
            lease = await one.acquire_lease("a")
            taking = asyncio.create_task(two.acquire_lease("a"))
            await asyncio.sleep(0.3)
            assert taking.done() is (not one.shared), "a shared lease is held by one instance"
            await one.release_lease(lease)
            async with asyncio.timeout(10):
                taken = await taking
            token = fence.set(lease)  # what the former leader's feed would publish under
            try:
                if one.shared:
                    with pytest.raises(LeadershipLost):
                        await one.publish("a", Event({"late": True}))
                else:
                    await one.publish("a", Event({"late": True}))
            finally:
                fence.reset(token)
            fenced = fence.set(taken)
            try:
                await two.publish("a", Event({"n": 1}))  # the new holder's publishes go through
            finally:
                fence.reset(fenced)
            # `two` reads its own write, so its history holds everything stored before that
            stored = [json.loads(m.data) for m in await two.read_history("a", None)]
            assert {"n": 1} in stored, stored
            if one.shared:
                assert {"late": True} not in stored, f"a fenced publish was stored: {stored}"
            await two.release_lease(taken)

    asyncio.run(scenario())


def test_a_claim_is_won_once_until_it_expires_or_is_given_back(make_broker):
    async def scenario():
        async with connected(make_broker) as one, connected(make_broker) as two:
            shared = one is not two and one.shared
            assert await one.claim("inbox:id:1", 60) is True
            assert await one.claim("inbox:id:1", 60) is False
            # another instance on the same Redis sees the claim; memory brokers are each their own
            assert await two.claim("inbox:id:1", 60) is (not shared)
            assert await one.claim("inbox:id:2", 60) is True
            await one.unclaim("inbox:id:1")
            assert await one.claim("inbox:id:1", 60) is True
            assert await one.claim("short", 0.2) is True
            await asyncio.sleep(0.3)  # on purpose: let the claim expire
            assert await one.claim("short", 0.2) is True

    asyncio.run(scenario())


def gap_of(frame: tuple[int, str, str]) -> dict:
    _, event, data = frame
    assert event.rsplit(":", 1)[-1] == "gap", frame
    return json.loads(data)


def test_resume_after_evicted_events_says_they_were_lost(make_broker):
    async def scenario():
        async with connected(make_broker) as broker:
            ids = [(await broker.publish("short", Event({"n": i}))).id for i in range(6)]  # keeps 3
            sub = await broker.subscribe(["short"], ids[0], sink=StreamSink())
            gap, *kept = await take(sub, 4)
            assert gap[0] == ids[2] and gap_of(gap)["reason"] == "expired", gap
            assert "lost" in gap_of(gap)["message"] and gap_of(gap)["last_event_id"] == ids[0]
            assert [f[0] for f in kept] == ids[3:]
            # Resuming from the gap event's id (the newest evicted) is complete again: no gap event.
            again = await broker.subscribe(["short"], gap[0], sink=StreamSink())
            assert [f[0] for f in await take(again, 3)] == ids[3:]
            await nothing_more(again)

    asyncio.run(scenario())


def test_requests_over_the_rpm_are_refused_with_the_seconds_until_one_leaves_the_window(make_broker):
    async def scenario():
        async with connected(make_broker) as broker:
            ledger = Ledger(broker)
            limits = Limits(rpm=2)
            first = await ledger.reserve("team", "m", limits, 10, 0)
            second = await ledger.reserve("team", "m", limits, 10, 0)
            assert isinstance(first, Reservation) and isinstance(second, Reservation), (first, second)
            third = await ledger.reserve("team", "m", limits, 10, 0)
            assert isinstance(third, Refusal) and third.reason == "rpm", third
            assert 1 <= third.retry_after <= 60, third
            # the window is per account
            assert isinstance(await ledger.reserve("other", "m", limits, 10, 0), Reservation)

    asyncio.run(scenario())


def test_multiplexed_resume_reports_the_topic_that_lost_events(make_broker):
    async def scenario():
        async with connected(make_broker) as broker:
            first = await broker.publish("a", Event({"n": 0}))
            ids = [(await broker.publish("short", Event({"n": i}))).id for i in range(4)]
            sub = await broker.subscribe(["a", "short"], first.id, sink=StreamSink(mux=True))
            frames = await take(sub, 4)
            assert [(f[0], f[1]) for f in frames] == [
                (ids[0], "short:gap"),
                (ids[1], "short"),
                (ids[2], "short"),
                (ids[3], "short"),
            ]
            await nothing_more(sub)

    asyncio.run(scenario())


def test_tokens_reserved_count_against_the_tpm_until_settled_with_real_usage(make_broker):
    async def scenario():
        async with connected(make_broker) as broker:
            ledger = Ledger(broker)
            limits = Limits(tpm=150)
            first = await ledger.reserve("team", "m", limits, 100, 0)
            assert isinstance(first, Reservation), first
            refused = await ledger.reserve("team", "m", limits, 100, 0)
            assert isinstance(refused, Refusal) and refused.reason == "tpm", refused
            await ledger.settle(first, 20, 10, 0)  # used 30 of the 100 reserved
            assert isinstance(await ledger.reserve("team", "m", limits, 100, 0), Reservation)
            assert isinstance(await ledger.reserve("team", "m", limits, 21, 0), Refusal)

    asyncio.run(scenario())


def test_resume_from_an_id_this_broker_never_gave_replays_history_and_says_so(make_broker):
    async def scenario():
        async with connected(make_broker) as broker:
            ids = [(await broker.publish(t, Event({"n": i}))).id for i, t in enumerate("aab")]
            foreign = ids[-1] + 10**12  # another server's id, or one from before history was wiped
            single = await broker.subscribe(["a"], foreign, sink=StreamSink())
            mux = await broker.subscribe(["a", "b"], foreign, sink=StreamSink(mux=True))
            frames = await take(single, 3)
            assert [(f[0], f[1]) for f in frames] == [(0, "gap"), (ids[0], "message"), (ids[1], "message")]
            assert (
                gap_of(frames[0])["reason"] == "unknown_id" and gap_of(frames[0])["last_event_id"] == foreign
            )
            frames = await take(mux, 5)
            assert [(f[0], f[1]) for f in frames] == [
                (0, "a:gap"),
                (0, "b:gap"),
                *zip(ids, "aab", strict=True),
            ]
            # Then live, although the new ids are below the one the reader came with.
            live = await broker.publish("a", Event({"n": 9}))
            assert [f[0] for f in await take(single, 1)] == [live.id]
            assert [f[0] for f in await take(mux, 1)] == [live.id]

    asyncio.run(scenario())


def test_the_budget_counts_what_is_spent_and_what_admitted_requests_hold(make_broker):
    async def scenario():
        async with connected(make_broker) as broker:
            ledger = Ledger(broker)
            limits = Limits(daily_nusd=100)
            a = await ledger.reserve("team", "gpt", limits, 1, 40)
            b = await ledger.reserve("team", "gpt", limits, 1, 40)
            assert isinstance(a, Reservation) and isinstance(b, Reservation)
            held = await ledger.reserve("team", "gpt", limits, 1, 40)
            # refused while 80 is held; may fit once those settle: try again in a second
            assert held == Refusal("budget", 1), held
            spend = await ledger.settle(a, 3, 2, 10)
            assert spend["keys"]["team"] == {
                "requests": 1,
                "prompt_tokens": 3,
                "completion_tokens": 2,
                "nusd": 10,
                "reserved": 40,
            }, spend
            assert spend["models"]["gpt"]["nusd"] == 10, spend
            await ledger.settle(b, 3, 2, 10)
            c = await ledger.reserve("team", "gpt", limits, 1, 80)
            assert isinstance(c, Reservation), c  # 20 spent + 80 fits in 100
            await ledger.settle(c, 3, 2, 75)
            spent = await ledger.reserve("team", "gpt", limits, 1, 10)
            # 95 spent, nothing held: no room before the UTC day ends
            assert isinstance(spent, Refusal) and spent.reason == "budget" and spent.retry_after > 1, spent
            today = await ledger.spend()
            assert today["keys"]["team"]["nusd"] == 95 and today["keys"]["team"]["reserved"] == 0, today

    asyncio.run(scenario())


def test_concurrent_reservations_never_hold_more_than_the_budget(make_broker):
    async def scenario():
        async with connected(make_broker) as one, connected(make_broker) as two:
            limits = Limits(daily_nusd=100)
            shared = one.shared
            # two memory brokers share nothing: each process keeps its own ledger
            ledgers = [Ledger(one), Ledger(two)] if shared else [Ledger(one)]
            results = await asyncio.gather(
                *(ledgers[i % len(ledgers)].reserve("team", "m", limits, 1, 30) for i in range(20))
            )
            admitted = [r for r in results if isinstance(r, Reservation)]
            assert len(admitted) == 3, results

    asyncio.run(scenario())


def test_the_ledger_is_one_for_every_instance_sharing_the_broker(make_broker):
    """A shared backend keeps the ledger's counters (its ledger primitive), so what one instance
    settles, another reads; a process-local one keeps each process's own."""

    async def scenario():
        async with connected(make_broker) as one, connected(make_broker) as two:
            ledger = Ledger(one)
            res = await ledger.reserve("team", "gpt", Limits(daily_nusd=100), 10, 50)
            assert isinstance(res, Reservation), res
            await ledger.settle(res, 3, 2, 20)
            seen = (await Ledger(two).spend())["keys"].get("team")
            if one.shared:
                assert seen == {
                    "requests": 1,
                    "prompt_tokens": 3,
                    "completion_tokens": 2,
                    "nusd": 20,
                    "reserved": 0,
                }, seen
            else:
                assert seen is None, seen

    asyncio.run(scenario())
