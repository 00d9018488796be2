"""The backend contract: what a broker backend must do, written once, in `Broker`.

A backend is one `Broker` subclass, picked by the URL's scheme (registry.py). What it must do, and
tests/test_broker_contract.py checks on every backend:

- storage and ids: `publish(topic, event)` stores the event with a new integer id, greater than
  every id given before on any topic (or the event's own id, when it is greater: else ValueError,
  see `check_requested_id`), builds the `Message` once and calls `deliver(message)` in each process
  that has subscribers (a shared backend: every process, in id order). It returns the stored message.
- history: `read_history(topic, after_id)` returns the stored messages after `after_id`, oldest
  first; `evicted_id(topic, after)` the newest id dropped to make room, when above `after` (the
  proof that a resuming reader lost events: it gets a `gap` event); `gave(id)` whether an id is
  not above the newest this broker gave (an id from elsewhere is replayed from, and reported).
- `connect`/`disconnect`, `healthy` (False while it cannot store; publish then raises
  BrokerUnavailable), and `shared` (True when processes share events: `serve --workers N`).

A backend whose events stay in one process (`shared = False`) is done: the base class keeps the
rest in this process (and a durable one, as sqlite, saves it in its file). A shared backend must
also make its instances agree on what follows, or each would lead, claim and count on its own; one
that lacks a part is refused when the server starts (`missing_parts`, checked by the registry),
naming what it lacks:

- leases and fencing: `acquire_lease(topic)` waits until this instance leads a topic's feed;
  `release_lease`; it sets `Lease.lost` when another instance took over and refuses, with
  LeadershipLost, a publish made under the `fence` context variable's lease once it is lost.
- claims: `claim(key, ttl)` / `unclaim(key)` deduplicate work across instances (a webhook
  delivered to two of them).
- presence: `share_presence(instance, counts)` / `presence_updates()` tell other instances how
  many streams watch each topic.
- the ledger primitive, on which the AI relay's ledger (dashboard/relay/ledger.py) keeps api
  keys' limits and spend: `ledger_reserve`, `ledger_settle`, `ledger_day`, each one atomic step
  for every instance. The relay says what the limits mean and which counters a request moves;
  the backend only keeps the counters and checks them in one step. The base class keeps them in
  `self.books` (books.py), so every backend has them.

Small state (`keep(key, value)`, `kept(key)`: alert rules' states) is kept in this process by
default; a durable backend keeps it across restarts, as it keeps claims and the ledger.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import AsyncIterator

from dashboard.broker.books import Hold, Limits, LocalBooks, Refusal
from dashboard.broker.fanout import Fanout
from dashboard.broker.leases import Lease
from dashboard.errors import InvalidEvent
from dashboard.events import Event, Message

MAX_CLAIMS = 100_000  # claims kept in memory at most (the oldest go first)


#: What a shared backend must implement itself (the base class's versions keep them in one process).
SHARED_PARTS: dict[str, tuple[str, ...]] = {
    "leases": ("acquire_lease", "release_lease"),
    "claims": ("claim", "unclaim"),
    "presence": ("share_presence", "presence_updates"),
    "the ledger primitive": ("ledger_reserve", "ledger_settle", "ledger_day"),
}


class Broker(Fanout, ABC):
    """Stores events per topic and delivers them to local subscribers; see the module docs."""

    #: its events reach every process using the same URL (so `serve --workers N` may use it)
    shared: bool = False
    #: the clock claims expire by: a backend that keeps them across restarts uses the wall clock
    claim_clock = staticmethod(time.monotonic)

    def __init__(self, *, history: int = 1000) -> None:
        super().__init__(history=history)
        self._claims: OrderedDict[str, float] = OrderedDict()  # key -> when it expires (claim_clock)
        self.books = LocalBooks()  # the ledger primitive's counters, unless the backend keeps them
        self._kept: dict[str, str] = {}  # see keep()

    @classmethod
    def from_url(cls, url: str, *, history: int, prefix: str, lease_ttl: float) -> Broker:
        """The broker for `url` (its scheme is this class's); a shared backend uses the rest."""
        return cls(history=history)

    # -- storage, ids and history: every backend -----------------------------------------------
    async def connect(self) -> None:
        """Open connections the backend needs."""

    async def disconnect(self) -> None:
        """Close every subscription and the backend's connections."""
        self.close_subscriptions()

    @abstractmethod
    async def publish(self, topic: str, event: Event) -> Message:
        """Store `event` on `topic` with a new id and deliver it; returns the stored message."""

    @abstractmethod
    async def read_history(self, topic: str, after_id: int | None) -> list[Message]:
        """The stored messages of `topic` with an id above `after_id` (all when None), oldest first."""

    @abstractmethod
    async def evicted_id(self, topic: str, after: int) -> int:
        """The newest id dropped from `topic`'s history to make room, when it is above `after`
        (0 otherwise): the proof that a reader resuming after `after` lost events."""

    @abstractmethod
    async def gave(self, id: int) -> bool:
        """Whether `id` is not above the newest id this broker has given: a resume id above it is
        not ours (another server's, or from before the broker was wiped)."""

    async def topic_added(self, name: str) -> None:
        """Serve topic `name`, added (`add_topic`) while connected: a reload added it. A backend
        that reads its topics' events from elsewhere starts reading this one too."""

    @property
    def healthy(self) -> bool:
        return True

    def describe(self) -> str:
        """Where its events are kept, for the startup banner."""
        return "in this process's memory (nothing is kept across a restart)"

    # -- what instances must agree on: kept in this process unless the backend is shared -------
    async def claim(self, key: str, ttl: float) -> bool:
        """True the first time `key` is claimed within `ttl` seconds, by any instance sharing this
        broker; False while an earlier claim holds (how feeds drop duplicates)."""
        now = self.claim_clock()
        claims = self._claims
        while claims and next(iter(claims.values())) <= now:
            claims.popitem(last=False)
        if claims.get(key, 0.0) > now:
            return False
        claims[key] = now + ttl
        claims.move_to_end(key)
        if len(claims) > MAX_CLAIMS:
            claims.popitem(last=False)
        return True

    async def unclaim(self, key: str) -> None:
        """Forget a claim (what it stood for was not done after all)."""
        self._claims.pop(key, None)

    async def share_presence(self, instance: str, counts: dict[str, int]) -> None:
        """Tell the other instances sharing this broker how many streams watch each topic here."""

    async def presence_updates(self) -> AsyncIterator[tuple[str, dict[str, int]]]:
        """What the other instances share: (instance, counts), for ever. None for a lone process."""
        await asyncio.Future()
        yield "", {}

    async def acquire_lease(self, topic: str) -> Lease:
        """Wait until this instance leads `topic`'s feed: at once, unless the broker is shared."""
        return Lease(topic)

    async def release_lease(self, lease: Lease) -> None:
        """Give up a lease, so that another instance can take the feed over at once."""
        lease.lost.set()

    # -- the ledger primitive: in this process (`self.books`) unless the backend keeps it ---------
    # The day's counters are named `k|<account>|<counter>` and `m|<model>|<counter>`, integers.
    async def ledger_reserve(
        self, account: str, limits: Limits, tokens: int, nusd: int, *, window: int, days: int
    ) -> Hold | Refusal:
        """In one step for every instance, using the backend's clock: refuse when `nusd` more than
        the day's `k|<account>|nusd` (spent) and `k|<account>|reserved` (held) would pass
        `limits.daily_nusd` (retry after 1 s when settling what is held may make room, else at the
        day's end); when one more request, or `tokens` more, than `account` counted over the last
        `window` seconds would pass `limits.rpm` or `limits.tpm` (retry once enough has left the
        window). Otherwise count them in this second's bucket, add `nusd` to the account's
        `reserved`, keep the day's counters `days` days, and return where they were counted."""
        return self.books.reserve(account, limits, tokens, nusd, window=window, days=days)

    async def ledger_settle(
        self, account: str, hold: Hold, tokens: int, increments: list[tuple[str, int]], *, days: int
    ) -> dict[str, int]:
        """In one step: add `tokens` (may be negative) to the account's bucket `hold.second` while
        it is in the window, add each (counter, n) of `increments` to the day `hold.day`, keep
        that day `days` days; return all of that day's counters."""
        return self.books.settle(account, hold, tokens, increments)

    async def ledger_day(self, day: int) -> dict[str, int]:
        """The counters of a UTC day (days since the epoch); empty when none were kept."""
        return self.books.day(day)

    # -- small state that outlives a restart where the backend is durable (alert rules') --------
    def keep(self, key: str, value: str) -> None:
        """Keep `value` under `key`. It never waits: a durable backend writes it with its next
        batch, before anything published after this call is acknowledged."""
        self._kept[key] = value

    def kept(self, key: str) -> str | None:
        """What was kept under `key`: in this process, or by a durable backend before it restarted
        (loaded when it connected)."""
        return self._kept.get(key)


def missing_parts(cls: type[Broker]) -> list[str]:
    """What `cls` lacks of the contract: abstract verbs, and for a shared backend the parts it must
    implement itself (SHARED_PARTS), each with the methods missing; empty when complete."""
    missing = [f"{name}()" for name in sorted(getattr(cls, "__abstractmethods__", ()))]
    if cls.shared:
        for part, methods in SHARED_PARTS.items():
            lacking = [name for name in methods if getattr(cls, name) is getattr(Broker, name)]
            if lacking:
                missing.append(f"{part} ({', '.join(f'{name}()' for name in lacking)})")
    return missing


def check_requested_id(requested: str, last_id: int) -> int:
    """The id a feed asked for, when it can keep ids increasing; InvalidEvent saying why otherwise."""
    try:
        wanted = int(requested)
    except (TypeError, ValueError):
        raise InvalidEvent(f"Event.id must be an integer, got {requested!r:.40}") from None
    if wanted <= last_id:
        raise InvalidEvent(f"Event.id {wanted} is not above the last id {last_id}; leave id unset")
    return wanted
