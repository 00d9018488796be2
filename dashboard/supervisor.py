"""Runs each topic's feed in its own task and restarts a failed one with capped, jittered backoff.

With a shared broker, a feed runs only while this instance holds its topic's lease: the others
stand by and one takes over when the leader goes away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dashboard.backoff import Backoff
from dashboard.broker import Broker, Lease, fence
from dashboard.errors import BrokerUnavailable, InvalidEvent, LeadershipLost
from dashboard.events import STATUS_EVENT, Event
from dashboard.feed import Feed
from dashboard.tasks import cancel_and_wait, finish_shielded

log = logging.getLogger("dashboard.supervisor")

REFUSAL_STATUS_EVERY = 5.0  # seconds: at most one status event per period for refused events
BROKER_RETRY = (0.1, 5.0)  # seconds: first and longest wait before storing a feed's event again


@dataclass
class FeedRunner:
    """One topic's feed and what is known of its health."""

    topic: str
    feed: Feed
    state: str = "starting"  # starting, standby, running, paused, restarting, finished, idle, stopped
    restarts: int = 0
    refused: int = 0  # events it yielded that could not be stored (InvalidEvent), skipped
    refusal_said: float = field(default=-REFUSAL_STATUS_EVERY, repr=False)  # monotonic time
    last_error: str | None = None
    leader: bool | None = None  # whether this instance runs the feed; None: push-only, no leader
    lease: Lease | None = field(default=None, repr=False)  # while it leads: what fences its events
    run_task: asyncio.Task[None] | None = field(default=None, repr=False)  # the feed's own task
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "restarts": self.restarts,
            "refused": self.refused,
            "last_error": self.last_error,
            "leader": self.leader,
        }


class Supervisor:
    """Owns the feed tasks: starts them, restarts them on failure, cancels them on shutdown."""

    def __init__(
        self,
        publish,
        backoff: Backoff | None = None,
        *,
        stable_after: float = 30.0,
        leases: Broker | None = None,
    ) -> None:
        self._publish = publish
        self.backoff = backoff or Backoff()
        self.stable_after = stable_after  # a run this long resets the backoff
        self.leases = leases  # who hands out feed leases; None: this process always leads
        self.runners: dict[str, FeedRunner] = {}

    async def publish(self, topic: str, event: Event) -> Any:
        """Publish `event` on `topic`: under the topic's lease when called from the feed's own task
        (its stream, or its `publish` from there), so a shared broker refuses it once another
        instance leads. Tasks the feed starts publish unfenced: the lease is never handed on to
        work that may outlive it (a prompt accepted by this instance is its own to finish)."""
        runner = self.runners.get(topic)
        lease = None
        if runner is not None and runner.run_task is not None and asyncio.current_task() is runner.run_task:
            lease = runner.lease
        reset = fence.set(lease)
        try:
            return await self._publish(topic, event)
        finally:
            fence.reset(reset)

    def add(self, topic: str, feed: Feed) -> FeedRunner:
        runner = FeedRunner(topic, feed)
        self.runners[topic] = runner
        return runner

    def start(self, topics: Iterable[str] | None = None) -> None:
        """Run the feeds of `topics` (None: every feed, at startup)."""
        for runner in list(self.runners.values()) if topics is None else [self.runners[t] for t in topics]:
            if runner.feed.has_stream():
                runner.task = asyncio.create_task(self._lead(runner), name=f"feed:{runner.topic}")
            else:
                runner.state = "idle"

    async def remove(self, topic: str) -> FeedRunner:
        """Stop the feed of `topic` and forget it (a reload removed or changed the topic); its
        lease is released, so that another instance can lead the new one at once."""
        runner = self.runners.pop(topic)
        if runner.task is not None:
            await cancel_and_wait([runner.task])
        runner.state = "stopped"
        return runner

    async def stop(self) -> None:
        await cancel_and_wait(r.task for r in self.runners.values() if r.task is not None)
        for runner in self.runners.values():
            runner.state = "stopped"

    async def _lead(self, runner: FeedRunner) -> None:
        """Run the feed while this instance holds its lease; stand by while another one does."""
        while True:
            runner.leader = False
            runner.state = "standby"
            lease = await self.leases.acquire_lease(runner.topic) if self.leases else Lease(runner.topic)
            runner.leader = True
            runner.state = "starting"
            runner.lease = lease
            feed = runner.run_task = asyncio.create_task(self._run(runner), name=f"feed:{runner.topic}:run")
            lost = asyncio.create_task(lease.lost.wait())
            try:
                await asyncio.wait({feed, lost}, return_when=asyncio.FIRST_COMPLETED)
                if feed.done():
                    await lost  # a finished feed keeps its lease: no other instance reruns it
            finally:
                await finish_shielded(self._let_go(runner, lease, feed, lost))
            log.info("feed %r stopped: this instance lost its lease and stands by", runner.topic)

    async def _let_go(self, runner: FeedRunner, lease: Lease, *tasks: asyncio.Task) -> None:
        """Stop the feed's tasks, then release its lease so another instance takes over at once."""
        await cancel_and_wait(tasks)
        if self.leases and not lease.lost.is_set():
            await self.leases.release_lease(lease)

    async def _run(self, runner: FeedRunner) -> None:
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                if runner.restarts:
                    await self._status(runner, "running")
                else:
                    runner.state = "running"
                stream = runner.feed.stream()
                if not hasattr(stream, "__aiter__"):
                    if asyncio.iscoroutine(stream):
                        stream.close()  # not awaited on purpose: say what to write instead
                    raise TypeError(
                        f"feed {runner.topic!r}: stream() gave {type(stream).__name__}, not an async "
                        "iterator; write it as `async def stream(self):` that yields Event(...)"
                    )
                async for event in stream:
                    if not isinstance(event, Event):
                        raise TypeError(
                            f"feed {runner.topic!r} yielded {type(event).__name__}, expected dashboard.Event"
                        )
                    await self._store(runner, event)
            except asyncio.CancelledError:
                raise
            except LeadershipLost:
                return  # another instance runs the feed now: _lead stands by
            except Exception as exc:
                attempt = 1 if time.monotonic() - started >= self.stable_after else attempt + 1
                runner.restarts += 1
                runner.last_error = f"{type(exc).__name__}: {exc}"
                delay = self.backoff.delay(attempt)
                log.exception("feed %r failed; restarting in %.1fs", runner.topic, delay)
                await self._status(runner, "restarting", error=runner.last_error, retry_in=round(delay, 3))
                await asyncio.sleep(delay)
            else:
                log.info("feed %r finished", runner.topic)
                await self._status(runner, "finished")
                return

    async def _store(self, runner: FeedRunner, event: Event) -> None:
        """Publish one event of the feed; while the broker cannot store it, the feed waits (it is
        not restarted, so it keeps its state) and the event is tried again with backoff. The fence
        still applies: once another instance leads, the lease is lost and this task is cancelled."""
        backoff = Backoff(*BROKER_RETRY)
        attempt = 0
        while True:
            try:
                await self.publish(runner.topic, event)
            except InvalidEvent as exc:
                # One bad event is skipped, said in the log and on the topic: the feed goes on.
                runner.refused += 1
                runner.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("feed %r yielded an event that cannot be stored, skipped: %s", runner.topic, exc)
                if time.monotonic() - runner.refusal_said >= REFUSAL_STATUS_EVERY:  # no flood of them
                    runner.refusal_said = time.monotonic()
                    await self._status(runner, runner.state, error=runner.last_error, refused=runner.refused)
                return
            except BrokerUnavailable as exc:
                attempt += 1
                if attempt == 1:
                    log.warning("feed %r paused: %s; its event waits to be stored", runner.topic, exc)
                    runner.state = "paused"
                    runner.last_error = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(backoff.delay(attempt))
                continue
            if attempt:
                log.info("feed %r resumed: its event was stored after %d tries", runner.topic, attempt + 1)
                runner.state = "running"
            return

    async def _status(self, runner: FeedRunner, state: str, **extra: Any) -> None:
        runner.state = state
        data = {"state": state, "restarts": runner.restarts, **extra}
        try:
            await self.publish(runner.topic, Event(data=data, event=STATUS_EVENT))
        except BrokerUnavailable as exc:  # the broker's trouble, said once by the reader: no traceback
            log.warning("could not publish status of feed %r: %s", runner.topic, exc)
        except Exception:
            log.exception("could not publish status of feed %r", runner.topic)
