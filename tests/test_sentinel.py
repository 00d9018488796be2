"""The Redis broker behind Sentinel: a real primary, two replicas and three sentinels on loopback;
the primary killed under a publish load, with a live reader and a resuming one."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from dashboard.broker import Broker, from_url
from dashboard.broker.redis.sentinel import parse_sentinel_url
from dashboard.config.schema import BrokerConfig
from dashboard.errors import BrokerConfigError, BrokerUnavailable
from dashboard.events import Event
from dashboard.web.sink import StreamSink
from tests.support import free_port, run_async, wait_for
from tests.test_broker_contract import parse_frames
from tests.test_scale_out import Tail, config

SERVICE = "mymaster"
DOWN_AFTER_MS = 1000  # the sentinels' down-after-milliseconds: how long a silent primary is trusted
HISTORY = 100_000  # nothing is trimmed during a test: what is missing was lost, not evicted


class SentinelSet:
    """A primary, two replicas and three sentinels, each a redis-server on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.primary, *self.replicas = (free_port() for _ in range(3))
        self.sentinels = [free_port() for _ in range(3)]
        self.procs: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def _run(self, port: int, *args: str) -> None:
        self.procs[port] = subprocess.Popen(
            ["redis-server", *args], cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def start(self) -> None:
        data = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
        self._run(self.primary, "--port", str(self.primary), *data)
        for port in self.replicas:
            self._run(port, "--port", str(port), *data, "--replicaof", "127.0.0.1", str(self.primary))
        # Sentinels learn of replicas from the primary's INFO, every 10 s: start them once it lists both.
        wait_for("both replicas to sync", self.replicas_synced, timeout=20)
        for port in self.sentinels:
            conf = self.workdir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\nlogfile sentinel-{port}.log\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
                f"sentinel parallel-syncs {SERVICE} 2\n"
            )
            self._run(port, str(conf), "--sentinel")
        wait_for("every sentinel to see the others and both replicas", self.ready, timeout=20)

    def replicas_synced(self) -> bool:
        """Whether the primary lists both replicas as online."""
        client = redis.Redis(port=self.primary, socket_timeout=0.5)
        try:
            info = client.info("replication")
        except redis.RedisError:
            return False
        finally:
            client.close()
        online = [v for k, v in info.items() if k.startswith("slave") and v.get("state") == "online"]
        return len(online) == 2

    def ready(self) -> bool:
        """Whether every sentinel knows the other two and both replicas."""
        for port in self.sentinels:
            client = redis.Redis(port=port, socket_timeout=0.5)
            try:
                state = client.sentinel_master(SERVICE)
            except redis.RedisError:
                return False
            finally:
                client.close()
            if state["num-other-sentinels"] < 2 or state["num-slaves"] < 2:
                return False
        return True

    def current_primary(self) -> int:
        """The primary's port, as the sentinels say."""
        client = redis.Redis(port=self.sentinels[0], socket_timeout=0.5)
        try:
            return int(client.sentinel_get_master_addr_by_name(SERVICE)[1])
        finally:
            client.close()

    def kill(self, port: int) -> None:
        self.procs[port].kill()
        self.procs[port].wait(5)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            proc.wait(10)


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
async def connected(url: str, min_replicas: int = 0) -> Broker:
    broker = from_url(url, history=HISTORY, prefix="sentinel", min_replicas=min_replicas)
    broker.add_topic("load", HISTORY)
    await broker.connect()
    return broker


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


# -- failover under load ---------------------------------------------------------------------------
async def drain(sub, frames: list[tuple[int, str, str]]) -> None:
    """Collect a subscription's frames as they come, so that its queue never fills."""
    while (chunk := await sub.sink.next_chunk()) is not None:
        frames.extend(parse_frames(chunk))


async def frames_until(frames: list, last_id: int, timeout: float = 20.0) -> list[tuple[int, str, str]]:
    async with asyncio.timeout(timeout):
        while not frames or frames[-1][0] < last_id:
            await asyncio.sleep(0.05)
    return frames


async def failover_under_load(group: SentinelSet, min_replicas: int) -> dict:
    """Publish without pause on one instance while another reads live; kill the primary; carry on
    until publishing has resumed for a while; then resume a third instance from before the kill."""
    publisher = await connected(group.url, min_replicas)
    reader = await connected(group.url)
    live_frames: list[tuple[int, str, str]] = []
    live = await reader.subscribe(["load"], replay=0, sink=StreamSink())
    draining = asyncio.create_task(drain(live, live_frames))
    acked: dict[int, float] = {}  # id -> when its publish was acknowledged (monotonic)
    latencies: list[float] = []
    refused = 0
    killed_at = float("inf")
    after_kill: list[float] = []  # when publishes begun after the kill were acknowledged
    stop = asyncio.Event()

    async def load() -> None:
        nonlocal refused
        while not stop.is_set():
            started = time.monotonic()
            try:
                message = await publisher.publish("load", Event(data={"at": started}))
            except BrokerUnavailable:
                refused += 1
                await asyncio.sleep(0.05)
                continue
            acked[message.id] = time.monotonic()
            if started > killed_at:
                after_kill.append(acked[message.id])
            latencies.append(acked[message.id] - started)
            await asyncio.sleep(0.002)

    publishing = asyncio.create_task(load())
    try:
        await asyncio.sleep(1.0)
        resume_from = max(acked)  # a reader that left here comes back after the failover
        await asyncio.sleep(1.0)
        before = len(latencies)
        killed_at = time.monotonic()
        group.kill(group.primary)
        async with asyncio.timeout(30):
            while not after_kill:
                await asyncio.sleep(0.05)
        resumed_at = after_kill[0]
        await asyncio.sleep(1.0)  # publishing carries on under the new primary
        stop.set()
        await publishing
        last = max(acked)
        await frames_until(live_frames, last)
        resumer = await connected(group.url)
        async with asyncio.timeout(20):  # the sentinels may not all name the new primary yet
            while not resumer.healthy:
                await asyncio.sleep(0.1)
        resumed_frames: list[tuple[int, str, str]] = []
        resumed = await resumer.subscribe(["load"], resume_from, sink=StreamSink())
        resuming = asyncio.create_task(drain(resumed, resumed_frames))
        await frames_until(resumed_frames, last)
    finally:
        stop.set()
        publishing.cancel()
        for broker in (publisher, reader, *([resumer] if "resumer" in locals() else [])):
            await broker.disconnect()
        draining.cancel()
        if "resuming" in locals():
            resuming.cancel()
    return {
        "acked": acked,
        "killed_at": killed_at,
        "failover": resumed_at - killed_at,
        "after_kill": len(after_kill),
        "latencies": sorted(latencies[:before]),
        "refused": refused,
        "resume_from": resume_from,
        "live": live_frames,
        "resumed": resumed_frames,
    }


def present_ids(group: SentinelSet) -> list[int]:
    """The ids the new primary holds."""
    client = redis.Redis(port=group.current_primary(), socket_timeout=5)
    try:
        return [int(raw.split(b"-")[0]) for raw, _ in client.xrange("sentinel:topic:load")]
    finally:
        client.close()


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
    resumed_ids = [id for id, _, _ in run["resumed"]]
    expected = [i for i in present if run["resume_from"] < i <= resumed_ids[-1]]
    assert resumed_ids == expected, f"resumed {len(resumed_ids)} events, the primary has {len(expected)}"


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
