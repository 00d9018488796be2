"""A Redis primary, two replicas and three sentinels on loopback, and a failover under a publish
load: shared by the Sentinel tests and `bench.sentinel`."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import redis

from dashboard.broker import Broker, from_url
from dashboard.errors import BrokerUnavailable
from dashboard.events import Event
from dashboard.web.sink import StreamSink
from tests.support import free_port, wait_for
from tests.test_broker_contract import parse_frames

SERVICE = "mymaster"
DOWN_AFTER_MS = 1000  # the sentinels' down-after-milliseconds: how long a silent primary is trusted
HISTORY = 100_000  # nothing is trimmed during a test: what is missing was lost, not evicted
READERS = 50  # readers that left before the kill, each at its own id, and resume after the failover


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
        # sentinels find each other by hello messages every 2 s and the replicas in INFO every 10 s
        wait_for("every sentinel to see the others and both replicas", self.ready, timeout=45)

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


async def connected(url: str, min_replicas: int = 0) -> Broker:
    broker = from_url(url, history=HISTORY, prefix="sentinel", min_replicas=min_replicas)
    broker.add_topic("load", HISTORY)
    await broker.connect()
    return broker


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
    until publishing has resumed for a while; then READERS readers that left before the kill, each at
    its own id, resume on a third instance."""
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
        known = sorted(acked)  # the readers that leave here come back after the failover
        resume_from = [known[len(known) * i // READERS] for i in range(READERS)]
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
        resumed: list[list[tuple[int, str, str]]] = [[] for _ in resume_from]
        resuming = []
        for position, frames in zip(resume_from, resumed, strict=True):
            sub = await resumer.subscribe(["load"], position, sink=StreamSink())
            resuming.append(asyncio.create_task(drain(sub, frames)))
        for frames in resumed:
            await frames_until(frames, last)
    finally:
        stop.set()
        publishing.cancel()
        for broker in (publisher, reader, *([resumer] if "resumer" in locals() else [])):
            await broker.disconnect()
        draining.cancel()
        for task in locals().get("resuming", []):
            task.cancel()
    return {
        "acked": acked,
        "killed_at": killed_at,
        "failover": resumed_at - killed_at,
        "after_kill": len(after_kill),
        "latencies": sorted(latencies[:before]),
        "refused": refused,
        "resume_from": resume_from,
        "live": live_frames,
        "resumed": resumed,
    }


def present_ids(group: SentinelSet) -> list[int]:
    """The ids the new primary holds."""
    client = redis.Redis(port=group.current_primary(), socket_timeout=5)
    try:
        return [int(raw.split(b"-")[0]) for raw, _ in client.xrange("sentinel:topic:load")]
    finally:
        client.close()
