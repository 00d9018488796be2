"""A feed that raises is restarted with backoff, reported as status, and never harms the others."""

import time

from tests.support import sse_stream, wait_for

CONFIG = """
supervisor: {initial_backoff: 0.05, max_backoff: 0.2}
topics:
  flaky: {feed: "tests.sample_feeds:Flaky", options: {fail_after: 3}}
  steady: {feed: "tests.sample_feeds:Ticker", options: {rate_hz: 50}}
  wrong: {feed: "tests.sample_feeds:NotAnEvent"}
  plain: {feed: "tests.sample_feeds:NotAsync"}
"""


def test_crashing_feed_restarts_and_others_keep_flowing(serve):
    server = serve(CONFIG)
    statuses, steady = [], []
    deadline = time.monotonic() + 20
    # the whole history: the flaky feed's first restarts happened before this stream opened
    with server.client() as client, sse_stream(client, "/sse?topic=flaky&topic=steady") as events:
        for event in events:
            if event.event == "flaky:status":
                statuses.append(event.json())
            elif event.event == "steady":
                steady.append(event.json()["n"])
            restarting = [s for s in statuses if s["state"] == "restarting"]
            if len(restarting) >= 4 and len(steady) >= 50:
                break
            assert time.monotonic() < deadline, f"statuses {statuses}, steady {len(steady)}"
        topics = client.get("/api/topics").json()["topics"]
        health = client.get("/healthz").json()

    assert steady == list(range(steady[0], steady[0] + len(steady))), "the healthy feed skipped events"
    first = restarting[0]
    assert first["error"] == "RuntimeError: flaky feed broke on purpose"
    # initial_backoff 0.05 doubling to max_backoff 0.2, each jittered into [delay/2, delay]
    for n, status in enumerate(restarting[:4]):
        ceiling = min(0.2, 0.05 * 2**n)
        assert ceiling / 2 - 0.001 <= status["retry_in"] <= ceiling + 0.001, (
            n,
            [s["retry_in"] for s in restarting],
        )
    assert any(s["state"] == "running" for s in statuses), "recovery is reported too"
    assert topics["flaky"]["status"]["restarts"] >= 3
    assert topics["steady"]["status"] == {
        "state": "running",
        "restarts": 0,
        "refused": 0,
        "last_error": None,
        "leader": True,
    }
    assert health["status"] == "ok"
    log = server.output()
    assert "feed 'flaky' failed; restarting" in log and "Traceback" in log


def test_a_feed_yielding_something_else_is_told_what_is_expected(serve):
    server = serve(CONFIG)
    with server.client() as client:
        deadline = time.monotonic() + 10
        while (status := client.get("/api/topics").json()["topics"]["wrong"]["status"])["restarts"] < 1:
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
    assert status["last_error"] == "TypeError: feed 'wrong' yielded dict, expected dashboard.Event"
    with server.client() as client:
        plain = wait_for(
            "the plain-function feed to fail",
            lambda: (s := client.get("/api/topics").json()["topics"]["plain"]["status"])["restarts"] and s,
        )
    assert plain["last_error"] == (
        "TypeError: feed 'plain': stream() gave list, not an async iterator; write it as "
        "`async def stream(self):` that yields Event(...)"
    )


def test_stop_waits_for_each_feed_and_releases_its_lease():
    """Stopping is not cut short by repeated cancellation: no feed task outlives it."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from dashboard import Event, Feed
    from dashboard.broker.memory import MemoryBroker
    from dashboard.supervisor import Supervisor

    class SlowToStop(Feed):
        async def stream(self):
            try:
                while True:
                    yield Event({"n": 1})
                    await asyncio.sleep(0.01)
            finally:
                await asyncio.shield(asyncio.sleep(0.3))  # cleanup that takes a while

    released = []

    class Broker(MemoryBroker):
        async def release_lease(self, lease):
            released.append(lease.topic)
            await super().release_lease(lease)

    async def scenario():
        broker = Broker()
        broker.add_topic("t")
        supervisor = Supervisor(broker.publish, leases=broker)
        supervisor.add("t", SlowToStop("t"))
        supervisor.start()
        await asyncio.sleep(0.1)
        await supervisor.stop()
        return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("feed:")]

    with ThreadPoolExecutor(1) as pool:
        alive = pool.submit(asyncio.run, scenario()).result(timeout=30)
    assert alive == [], f"feed tasks still running after stop(): {alive}"
    assert released == ["t"], "the lease was not released"


def test_backoff_doubles_up_to_its_cap_and_a_stable_run_starts_it_again():
    """Delays double from `initial` to `maximum` (jittered into [delay/2, delay]); a run that lasted
    `stable_after` seconds before failing is counted as a first failure again."""
    import asyncio

    from dashboard import Event, Feed
    from dashboard.backoff import Backoff
    from dashboard.broker.memory import MemoryBroker
    from dashboard.supervisor import Supervisor

    ceilings = [Backoff(0.1, 1.0).delay(attempt) for attempt in range(1, 8) for _ in range(200)]
    for attempt in range(1, 8):
        ceiling = min(1.0, 0.1 * 2 ** (attempt - 1))
        drawn = ceilings[(attempt - 1) * 200 : attempt * 200]
        assert all(ceiling / 2 <= d <= ceiling for d in drawn), (attempt, min(drawn), max(drawn))
        assert max(drawn) > ceiling * 0.9 and min(drawn) < ceiling * 0.6, (attempt, min(drawn), max(drawn))

    runs = [0.0, 0.0, 0.0, 0.3, 0.0, 0.0]  # how long each run lasts before it raises
    attempts: list[int] = []

    class Recording(Backoff):
        def delay(self, attempt: int) -> float:
            attempts.append(attempt)
            return 0.0

    class Failing(Feed):
        async def stream(self):
            await asyncio.sleep(runs.pop(0) if runs else 60)
            raise RuntimeError("broke on purpose")
            yield Event({})

    async def scenario():
        broker = MemoryBroker()
        broker.add_topic("t")
        supervisor = Supervisor(broker.publish, Recording(), stable_after=0.2, leases=broker)
        supervisor.add("t", Failing("t"))
        supervisor.start()
        async with asyncio.timeout(10):
            while len(attempts) < 6:
                await asyncio.sleep(0.01)
        await supervisor.stop()

    asyncio.run(scenario())
    assert attempts == [1, 2, 3, 1, 2, 3], (
        f"a run of 0.3 s (over stable_after) starts the count again: {attempts}"
    )
