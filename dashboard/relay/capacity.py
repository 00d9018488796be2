"""A provider's limits in this process: requests in flight (`max_concurrency`), requests and tokens per
minute (`rpm`, `tpm`, counted in the api keys' sliding window, broker.books.LocalBooks), a bounded queue,
first come first served, for requests that find no room, and the cool-down of a provider that keeps
failing. Kept on the Provider, so a reload that leaves a provider unchanged keeps its counters."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque

from dashboard.broker import Hold, Limits, Refusal
from dashboard.broker.books import LocalBooks
from dashboard.config import AIProvider
from dashboard.relay.errors import QueueFull
from dashboard.relay.ledger import LIMIT_WINDOW
from dashboard.relay.metrics import QUEUE_REFUSALS, QUEUE_WAIT, Measure

log = logging.getLogger("dashboard.relay")

FAILURES_BEFORE_COOLDOWN = 3  # consecutive failures that take a provider out for its cool-down


class Slot:
    """Room taken at one provider for one upstream request, given back once however it ends."""

    def __init__(self, capacity: Capacity, hold: Hold | None, tokens: int) -> None:
        self.capacity = capacity
        self.hold = hold  # where the rpm / tpm window counted it (None: the provider has neither)
        self.tokens = tokens  # the estimate counted in the tpm window
        self.released = False

    async def release(self, measure: Measure | None = None) -> None:
        """Give the room back; the tpm window counts the tokens `measure` saw used, when it has them."""
        if self.released:
            return
        self.released = True
        await self.capacity.give_back(self, measure)


class Capacity:
    """The room one provider has for requests, and whether it is cooling down after failures."""

    def __init__(self, config: AIProvider) -> None:
        self.name = config.name
        self.max_concurrency = config.max_concurrency
        self.limits = Limits(rpm=config.rpm, tpm=config.tpm)
        self.max_queue = config.max_queue
        self.cooldown = config.cooldown
        self.in_flight = 0
        self._queue: deque[asyncio.Event] = deque()  # waiting requests, each woken when it is first
        self._window = LocalBooks() if config.rpm or config.tpm else None
        self.failures = 0  # in a row
        self._cooling_until = 0.0  # time.monotonic()

    def busy(self) -> int:
        """Requests in flight or waiting (least_busy routing prefers the lowest)."""
        return self.in_flight + len(self._queue)

    def cooling(self) -> bool:
        """Whether the provider failed too often lately to be tried before the others."""
        return time.monotonic() < self._cooling_until

    def failed(self) -> None:
        """A request failed for the provider's sake; the third in a row starts its cool-down (and,
        once it is over, each further failure starts another until one succeeds)."""
        self.failures += 1
        if self.failures >= FAILURES_BEFORE_COOLDOWN and self.cooldown > 0:
            self._cooling_until = time.monotonic() + self.cooldown
            log.warning(
                "provider %r failed %d times in a row: passed over for %gs",
                self.name,
                self.failures,
                self.cooldown,
            )

    def succeeded(self) -> None:
        self.failures = 0
        self._cooling_until = 0.0

    async def take_now(self, tokens: int) -> Slot | None:
        """Room for a request estimated at `tokens`, if there is some now and nobody waits for it."""
        if self._queue:
            return None
        taken = await self._take(tokens)
        return taken if isinstance(taken, Slot) else None

    async def wait_for_room(self, tokens: int, until: float) -> Slot:
        """Room for a request, waiting in the provider's queue (first come, first served) until
        `until` (the event loop's time): QueueFull when `max_queue` requests already wait,
        TimeoutError when `until` passes first."""
        if len(self._queue) >= self.max_queue:
            QUEUE_REFUSALS.labels(self.name, "full").inc()
            raise QueueFull(
                f"provider {self.name!r} is at its limits and {self.max_queue} requests already wait for it",
                headers={"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        turn = asyncio.Event()
        self._queue.append(turn)
        queued = loop.time()
        try:
            while True:
                wake = until
                if self._queue[0] is turn:
                    taken = await self._take(tokens)
                    if isinstance(taken, Slot):
                        QUEUE_WAIT.labels(self.name).observe(loop.time() - queued)
                        return taken
                    wake = min(until, loop.time() + taken)  # inf: until a request ends
                turn.clear()
                try:
                    async with asyncio.timeout_at(wake):
                        await turn.wait()
                except TimeoutError:
                    if wake == until:
                        QUEUE_REFUSALS.labels(self.name, "timeout").inc()
                        QUEUE_WAIT.labels(self.name).observe(loop.time() - queued)
                        raise
        finally:
            self._queue.remove(turn)
            self._wake_first()

    async def _take(self, tokens: int) -> Slot | float:
        """A slot, or the seconds until there may be room (inf: when a request in flight ends).
        Never suspends, so checking and taking are one step."""
        if self.max_concurrency is not None and self.in_flight >= self.max_concurrency:
            return math.inf
        hold = None
        if self._window is not None:
            tokens = min(tokens, self.limits.tpm or tokens)  # a request larger than tpm still fits alone
            held = self._window.reserve(self.name, self.limits, tokens, 0, window=LIMIT_WINDOW, days=1)
            if isinstance(held, Refusal):
                return float(held.retry_after)
            hold = held
        self.in_flight += 1
        return Slot(self, hold, tokens)

    async def give_back(self, slot: Slot, measure: Measure | None) -> None:
        self.in_flight -= 1
        usage = measure.usage if measure is not None else None
        if self._window is not None and slot.hold is not None and usage is not None:
            used = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
            self._window.settle(self.name, slot.hold, used - slot.tokens, [])
        self._wake_first()

    def _wake_first(self) -> None:
        if self._queue:
            self._queue[0].set()
