"""The Redis broker behind Sentinel: a real primary, two replicas and three sentinels on loopback;
the primary killed under a publish load, with a live reader and 50 resuming ones."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import redis

from dashboard.broker import from_url
from dashboard.broker.redis.sentinel import parse_sentinel_url
from dashboard.config.schema import BrokerConfig
from dashboard.errors import BrokerConfigError, BrokerUnavailable
from dashboard.events import Event
from tests.sentinels import DOWN_AFTER_MS, SentinelSet, connected, failover_under_load, present_ids
from tests.support import run_async, wait_for
from tests.test_scale_out import Tail, config


@pytest.fixture
def sentinels(tmp_path):
    """A running SentinelSet, stopped afterwards. Without redis-server the test is skipped, except in
    CI (CI=true), where it fails (.ci/run installs it)."""
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (Sentinel runs as redis-server --sentinel)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + " (CI must provide it: see .ci/run)")
        pytest.skip(message)
    group = SentinelSet(tmp_path)
    try:
        group.start()
        yield group
    finally:
        group.stop()


# -- the URL -------------------------------------------------------------------------------------
def test_the_url_names_the_sentinels_the_service_and_the_database():
    target = parse_sentinel_url("rediss+sentinel://:s3cret@h1:26379,h2,[::1]:26380/mymaster/2")
    assert target.sentinels == [("h1", 26379), ("h2", 26379), ("::1", 26380)]
    assert (target.service, target.db, target.password, target.tls) == ("mymaster", 2, "s3cret", True)
    assert "s3cret" not in target.where


@pytest.mark.parametrize("url", ["redis+sentinel://h1:26379", "redis+sentinel:///mymaster/0"])
def test_a_url_without_sentinels_or_service_is_refused(url):
    with pytest.raises(BrokerConfigError, match="must name the sentinels and the service"):
        from_url(url)


def test_min_replicas_is_refused_without_redis():
    with pytest.raises(ValueError, match="min_replicas concerns Redis only"):
        BrokerConfig(url="memory://", min_replicas=1)
    assert BrokerConfig(url="redis+sentinel://h1:26379/mymaster/0", min_replicas=1).min_replicas == 1


# -- a real Sentinel -------------------------------------------------------------------------------
def test_the_broker_finds_the_primary_through_the_sentinels(sentinels):
    async def scenario() -> None:
        broker = await connected(sentinels.url, min_replicas=2)
        try:
            stored = [await broker.publish("load", Event(data={"n": n})) for n in range(3)]
            history = await broker.read_history("load", None)
        finally:
            await broker.disconnect()
        assert [m.id for m in history] == [m.id for m in stored]

    run_async(scenario(), timeout=60)


def test_min_replicas_above_the_replicas_there_are_answers_503_and_a_retry_stores_nothing_twice(sentinels):
    async def scenario() -> None:
        broker = await connected(sentinels.url, min_replicas=3)
        event = Event(data={"once": True})
        try:
            for _ in range(2):  # as the supervisor does: the same event again
                with pytest.raises(BrokerUnavailable, match=r"only 2 of the 3 replicas .* may be lost"):
                    await broker.publish("load", event)
            history = await broker.read_history("load", None)
        finally:
            await broker.disconnect()
        assert len(history) == 1, f"the refused event is stored once: {history}"

    run_async(scenario(), timeout=60)


@pytest.mark.parametrize("min_replicas", [0, 1])
def test_a_primary_killed_under_load_fails_over_and_every_loss_is_counted(sentinels, min_replicas):
    run = run_async(failover_under_load(sentinels, min_replicas), timeout=90)
    assert sentinels.current_primary() != sentinels.primary, "the sentinels promoted a replica"
    present = present_ids(sentinels)
    acked, killed_at = run["acked"], run["killed_at"]
    lost = sorted(set(acked) - set(present))
    latencies = run["latencies"]
    print(
        f"\nmin_replicas={min_replicas}: {len(acked)} acknowledged, {len(acked) - len(lost)} present after "
        f"failover, {len(lost)} lost; failover {run['failover']:.2f}s ({run['refused']} refused meanwhile); "
        f"publish latency median {latencies[len(latencies) // 2] * 1000:.2f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.2f} ms over {len(latencies)} publishes"
    )
    assert run["failover"] <= DOWN_AFTER_MS / 1000 + 5, f"publishing resumed after {run['failover']:.1f}s"
    assert run["after_kill"] >= 10, f"publishing did not carry on: {run['after_kill']} after the kill"
    if min_replicas:
        assert not lost, f"acknowledged with min_replicas 1, missing after the failover: {lost}"
    else:  # asynchronous replication: only what was acknowledged just before the kill can be missing
        late = [id for id in lost if acked[id] < killed_at - 1.0]
        assert not late, f"lost events acknowledged over a second before the kill: {late}"

    # The live reader skipped nothing the new primary holds, in order, and was told of no gap.
    live = run["live"]
    live_ids = [id for id, event, _ in live]
    assert live_ids == sorted(set(live_ids)), "the live reader's ids must grow, once each"
    assert not [f for f in live if f[1].endswith("gap")], f"no gap here: {[f for f in live if 'gap' in f[1]]}"
    missed = sorted(set(i for i in present if live_ids[0] <= i <= live_ids[-1]) - set(live_ids))
    assert not missed, f"the live reader silently skipped {missed}"

    # Resuming across the failover is exact for every event the new primary has.
    for position, frames in zip(run["resume_from"], run["resumed"], strict=True):
        resumed_ids = [id for id, _, _ in frames]
        expected = [i for i in present if position < i <= resumed_ids[-1]]
        said = f"from {position}: resumed {len(resumed_ids)}, the primary has {len(expected)}"
        assert resumed_ids == expected, said


# -- a server through a failover -------------------------------------------------------------------
def test_a_server_follows_the_promotion_with_streams_open_and_its_feed_paused_not_restarted(sentinels, serve):
    text = config("failover", url=sentinels.url, lease_ttl=15).replace(
        "lease_ttl: 15", "lease_ttl: 15, min_replicas: 1"
    )
    server = serve(text)
    with server.client() as client, Tail(server.url, "/sse/count?replay=0") as tail:
        seen = tail.take(5)
        sentinels.kill(sentinels.primary)
        refused = wait_for(
            "a push to be refused while there is no primary",
            lambda: (r := client.post("/feeds/pushed/push", json={})).status_code == 503 and r.json(),
        )
        assert refused["error"]["code"] == "broker_unavailable", refused
        wait_for(
            "publishing to resume by itself", lambda: client.post("/feeds/pushed/push", json={}).is_success
        )
        wait_for("healthz to recover", lambda: client.get("/healthz").status_code == 200)
        seen += tail.take(10)
        assert not tail.closed.is_set(), "the stream was closed by the failover"
        status = client.get("/api/topics").json()["topics"]["count"]["status"]
    counts = [json.loads(e.data)["n"] for e in seen]
    assert counts == list(range(counts[0], counts[0] + len(counts))), f"the counter went {counts}"
    assert status["restarts"] == 0 and status["state"] == "running", status
    assert "Traceback" not in server.output(), server.output()


@pytest.mark.parametrize("min_replicas", [0, 1])
def test_an_event_no_replica_received_is_lost_in_a_failover_unless_min_replicas_held_it_back(
    sentinels, min_replicas
):
    """The replicas cut off, one event published, the primary killed at once: without min_replicas
    the event was acknowledged and is lost; with it, the publish is refused (503), not acknowledged."""

    async def publish_then_kill() -> tuple[int | None, int]:
        broker = await connected(sentinels.url, min_replicas)
        try:
            before = await broker.publish("load", Event(data={"held": True}))
            primary = redis.Redis(port=sentinels.primary)
            # New connections must now authenticate, which the replicas cannot: cut off, they stay
            # so (the broker's open connections are let be).
            primary.config_set("requirepass", "cut-off")
            primary.client_kill_filter(_type="replica")
            primary.close()
            try:
                acked: int | None = (await broker.publish("load", Event(data={"alone": True}))).id
            except BrokerUnavailable:
                acked = None
            sentinels.kill(sentinels.primary)
        finally:
            await broker.disconnect()
        return acked, before.id

    acked, before = run_async(publish_then_kill(), timeout=60)
    wait_for("a replica to be promoted", lambda: sentinels.current_primary() != sentinels.primary)
    present = present_ids(sentinels)
    assert before in present, "an event the replicas held survives"
    if min_replicas:
        assert acked is None, f"acknowledged with min_replicas 1 though no replica could hold it: {acked}"
    else:
        assert acked is not None and acked not in present, "acknowledged by the primary alone, then lost"
