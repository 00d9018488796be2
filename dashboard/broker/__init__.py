"""The broker: stores each topic's recent events and hands them to subscribers' sinks.

A backend is one file with one `Broker` subclass, picked by the URL's scheme from a registry
(`backends()`: the built-in `memory://` and `redis://`/`rediss://`, plus any a package registers
under the entry-point group `dashboard.brokers`, named by scheme, valued "module:Class"). What a
backend must do, and tests/test_broker_contract.py checks on every built-in one:

- storage and ids: `publish(topic, event)` stores the event with a new integer id, greater than
  every id given before on any topic (or the event's own id, when it is greater: else ValueError),
  builds the `Message` once and calls `deliver(message)` in each process that has subscribers
  (a shared backend: every process, in id order). It returns the stored message.
- history: `read_history(topic, after_id)` returns the stored messages after `after_id`, oldest
  first; `evicted_id(topic, after)` the newest id dropped to make room, when above `after` (the
  proof that a resuming reader lost events: it gets a `gap` event); `gave(id)` whether an id is
  not above the newest this broker gave (an id from elsewhere is replayed from, and reported).
- leases and fencing: `acquire_lease(topic)` waits until this instance leads a topic's feed
  (at once for a process-local backend); `release_lease`; a shared backend sets `Lease.lost` when
  another instance took over and refuses, with LeadershipLost, a publish made under the `fence`
  context variable's lease once it is lost.
- claims: `claim(key, ttl)` / `unclaim(key)` deduplicate work across instances (a webhook
  delivered to two of them); the base class keeps claims in this process.
- presence: `share_presence(instance, counts)` / `presence_updates()` tell other instances how
  many streams watch each topic (nothing to do for a process-local backend).
- `connect`/`disconnect`, `healthy` (False while it cannot store; publish then raises
  BrokerUnavailable), and `shared` (True when processes share events: `serve --workers N`).

Everything else is shared by every backend and lives here: topics, the local fan-out to
`Subscription`s and their `Sink`s (the web layer's SSE streams), replay with no gap and no
duplicate, counters for /api/topics.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import time
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Protocol
from urllib.parse import urlsplit

from dashboard.errors import BrokerConfigError, InvalidEvent, UnknownTopic
from dashboard.events import GAP_EVENT, Event, Message, encode_data

ENTRY_POINT_GROUP = "dashboard.brokers"  # where packages register more backends, by URL scheme
BUILT_IN = {
    "memory": "dashboard.broker.memory:MemoryBroker",
    "redis": "dashboard.broker.redis:RedisBroker",
    "rediss": "dashboard.broker.redis:RedisBroker",
}
MAX_CLAIMS = 100_000  # claims kept in memory at most (the oldest go first)
RATE_WINDOW = 10.0  # seconds over which /api/topics reports a topic's event rate
LIMIT_WINDOW = 60  # seconds of the sliding window of rpm and tpm (in one-second buckets)
DAY = 86400
SPEND_DAYS = 3  # days a day's spend is kept (today, yesterday, and one for clocks that differ)
NANO = 1_000_000_000  # costs are kept in whole nano-dollars, so sums are exact on every backend


class Sink(Protocol):
    """Where a subscriber's messages go; the web layer's SSE stream is one (dashboard.web.sink).

    The broker calls it synchronously, in id order, once per message and never twice with one id.
    It must not block: a sink that cannot keep up refuses the message and is dropped.
    """

    missed: int  #: once it refused a message: how many events it lost, that one included

    def put(self, message: Message) -> bool:
        """Take `message`; False refuses it (the reader fell too far behind) and ends the stream."""
        ...

    def replay(self, messages: list[Message]) -> None:
        """Take the replayed history, oldest first, all at once: it is what the reader asked for,
        so no backlog limit applies."""
        ...

    def notice(self, topic: str, event: str, data: str) -> None:
        """Pass on something that is no stored event (no id), such as presence counts."""
        ...

    def close(self) -> None:
        """No more messages: send what was taken, then end."""
        ...


class Subscription:
    """One subscriber to some topics: passes each new message to its sink, in id order, once.

    Live messages that arrive while the history is read are held, then passed on after it.
    """

    __slots__ = ("_held", "closed", "last_id", "missed", "overflowed", "presence", "sink", "topics")

    def __init__(self, topics: tuple[str, ...], sink: Sink) -> None:
        self.topics = topics
        self.sink = sink
        self.last_id = 0
        self.closed = False
        self.overflowed = False  # its sink refused a message: it was cut off
        self.missed = 0  # events it lost when cut off
        # Live messages are held here while the backlog is read, then passed on after it.
        self._held: list[Message] | None = []
        #: per topic, the number of watchers this stream was last told; None: it did not ask
        self.presence: dict[str, int] | None = None

    def push(self, message: Message) -> bool:
        """Pass one message on; False when it was not (duplicate, closed, or cut off now)."""
        if self._held is not None:
            self._held.append(message)
            return True
        if self.closed or message.id <= self.last_id:
            return False
        self.last_id = message.id
        if self.sink.put(message):
            return True
        self.missed = self.sink.missed
        self.overflowed = True
        self.close()
        return False

    def start(
        self, backlog: list[Message], floors: dict[str, int] | None = None, gaps: list[Message] | None = None
    ) -> None:
        """Pass on the replayed `backlog` and what arrived meanwhile, in id order, then go live.

        `floors` holds, per topic, the newest id a limited replay left out: a message that old
        arriving live (late, from a backend's reader) is left out too. `gaps` are `gap` events
        for this subscriber alone, passed on in id order among the rest."""
        held, self._held = self._held or [], None
        floors = floors or {}
        gaps = gaps or []
        replayed: list[Message] = []
        for message in sorted((*gaps, *backlog, *held), key=lambda m: m.id):
            new = message.id > self.last_id and message.id > floors.get(message.topic, 0)
            if new or any(message is gap for gap in gaps):
                self.last_id = max(self.last_id, message.id)
                replayed.append(message)
        if replayed:
            self.sink.replay(replayed)

    def close(self) -> None:
        """End the stream: the sink sends what it has and finishes."""
        if not self.closed:
            self.closed = True
            self.sink.close()


@dataclass
class TopicState:
    """What the broker keeps per topic in this process."""

    name: str
    history: deque[Message]
    subscribers: set[Subscription] = field(default_factory=set)
    published: int = 0
    delivered: int = 0
    dropped: int = 0  # events that subscribers cut off for falling behind missed
    cut_off: int = 0  # subscribers cut off
    recent: deque[float] = field(default_factory=deque)
    listeners: list[Callable[[Message], None]] = field(default_factory=list)

    @property
    def last_id(self) -> int | None:
        return self.history[-1].id if self.history else None

    def after(self, after_id: int | None) -> list[Message]:
        """The kept messages with an id above `after_id` (all when None), oldest first."""
        if after_id is None:
            return list(self.history)
        newer: list[Message] = []
        for message in reversed(self.history):
            if message.id <= after_id:
                break
            newer.append(message)
        newer.reverse()
        return newer

    def rate(self, now: float | None = None) -> float:
        """Events per second over the last RATE_WINDOW seconds."""
        now = time.monotonic() if now is None else now
        while self.recent and self.recent[0] < now - RATE_WINDOW:
            self.recent.popleft()
        return len(self.recent) / RATE_WINDOW


@dataclass(frozen=True)
class Limits:
    """What one account may use: requests and tokens per minute, nano-dollars per UTC day (None:
    no limit)."""

    rpm: int | None = None
    tpm: int | None = None
    daily_nusd: int | None = None


@dataclass(frozen=True)
class Reservation:
    """An admitted request's estimate, held against its account's limits until it is settled."""

    account: str
    model: str
    tokens: int  # counted in the tpm window
    nusd: int  # held against the day's budget
    second: int  # the window bucket it was counted in (Unix seconds)
    day: int  # the UTC day it is charged to (days since the epoch)


@dataclass(frozen=True)
class Refusal:
    """Why a request was not admitted (`rpm`, `tpm` or `budget`) and when to try again."""

    reason: str
    retry_after: int  # seconds


def spend_increments(res: Reservation, prompt: int, completion: int, nusd: int) -> list[tuple[str, int]]:
    """The day's counters a settled request moves: its account's and its model's; the account's
    reservation is given back."""
    out = [(f"k|{res.account}|reserved", -res.nusd)]
    for kind, name in (("k", res.account), ("m", res.model)):
        out += [
            (f"{kind}|{name}|requests", 1),
            (f"{kind}|{name}|prompt_tokens", prompt),
            (f"{kind}|{name}|completion_tokens", completion),
            (f"{kind}|{name}|nusd", nusd),
        ]
    return out


def parse_spend(fields: dict[str, int]) -> dict[str, dict[str, dict[str, int]]]:
    """A day's counters (`k|<account>|<counter>`, `m|<model>|<counter>`) as
    `{"keys": {account: {counter: n}}, "models": {model: {counter: n}}}`."""
    out: dict[str, dict[str, dict[str, int]]] = {"keys": {}, "models": {}}
    for field_name, value in fields.items():
        kind, _, rest = field_name.partition("|")
        name, _, counter = rest.rpartition("|")
        group = out["keys" if kind == "k" else "models"]
        group.setdefault(name, {})[counter] = int(value)
    return out


def _wait(buckets: dict[int, list[int]], index: int, need: int, now: float) -> int:
    """Seconds until `need` of the window's requests (index 0) or tokens (1) have left it."""
    freed = 0
    for second in sorted(buckets):
        freed += buckets[second][index]
        if freed >= need:
            return max(1, math.ceil(second + LIMIT_WINDOW - now))
    return LIMIT_WINDOW


class Lease:
    """Leadership of one topic's feed on this instance: held until `lost` is set.

    Each topic's feed runs on one instance at a time. A single-process broker always leads, and
    its leases are never lost; a shared broker hands a lease to one instance and fences the
    publishes made under it (see `fence`).
    """

    def __init__(self, topic: str, token: str = "") -> None:
        self.topic = topic
        self.token = token
        self.lost = asyncio.Event()


#: The lease the current task publishes under. The supervisor sets it in a feed's task, so a
#: shared broker rejects that feed's events once another instance has taken the lease.
fence: ContextVar[Lease | None] = ContextVar("dashboard_fence", default=None)


class Broker(ABC):
    """Stores events per topic and delivers them to local subscribers; see the module docs."""

    #: its events reach every process using the same URL (so `serve --workers N` may use it)
    shared: bool = False

    def __init__(self, *, history: int = 1000) -> None:
        self.default_history = history
        self.topics: dict[str, TopicState] = {}
        self._claims: OrderedDict[str, float] = OrderedDict()  # key -> when it expires (monotonic)
        #: called when a topic gains or loses a local subscriber (presence counts them)
        self.on_watchers_changed: Callable[[], None] = lambda: None
        self._windows: dict[str, dict[int, list[int]]] = {}  # account -> second -> [requests, tokens]
        self._days: dict[int, dict[str, int]] = {}  # UTC day -> spend counters (see parse_spend)

    @classmethod
    def from_url(cls, url: str, *, history: int, prefix: str, lease_ttl: float) -> Broker:
        """The broker for `url` (its scheme is this class's); a shared backend uses the rest."""
        return cls(history=history)

    # -- backend verbs -------------------------------------------------------------------------
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

    @property
    def healthy(self) -> bool:
        return True

    async def claim(self, key: str, ttl: float) -> bool:
        """True the first time `key` is claimed within `ttl` seconds, by any instance sharing this
        broker; False while an earlier claim holds (how feeds drop duplicates)."""
        now = time.monotonic()
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

    async def reserve(
        self, account: str, model: str, limits: Limits, tokens: int, nusd: int
    ) -> Reservation | Refusal:
        """Admit a request estimated at `tokens` and `nusd` when it fits in what `account` has left
        (the day's budget counting what is spent and what admitted requests still hold; requests
        and tokens over the last minute); atomic across every instance sharing the broker."""
        now = time.time()
        second, day = int(now), int(now) // DAY
        window = self._windows.setdefault(account, {})
        for old in [s for s in window if s <= second - LIMIT_WINDOW]:
            del window[old]
        counters = self._days.setdefault(day, {})
        for old in [d for d in self._days if d <= day - SPEND_DAYS]:
            del self._days[old]
        if limits.daily_nusd is not None:
            spent = counters.get(f"k|{account}|nusd", 0)
            held = counters.get(f"k|{account}|reserved", 0)
            if spent + held + nusd > limits.daily_nusd:
                # Room may come back when requests in flight settle below their estimates.
                wait = 1 if held > 0 and spent + nusd <= limits.daily_nusd else (day + 1) * DAY - now
                return Refusal("budget", max(1, math.ceil(wait)))
        requests = sum(b[0] for b in window.values())
        if limits.rpm is not None and requests + 1 > limits.rpm:
            return Refusal("rpm", _wait(window, 0, requests + 1 - limits.rpm, now))
        used = sum(b[1] for b in window.values())
        if limits.tpm is not None and used + tokens > limits.tpm:
            return Refusal("tpm", _wait(window, 1, used + tokens - limits.tpm, now))
        bucket = window.setdefault(second, [0, 0])
        bucket[0] += 1
        bucket[1] += tokens
        counters[f"k|{account}|reserved"] = counters.get(f"k|{account}|reserved", 0) + nusd
        return Reservation(account, model, tokens, nusd, second, day)

    async def settle(
        self, res: Reservation, prompt_tokens: int, completion_tokens: int, nusd: int
    ) -> dict[str, dict[str, dict[str, int]]]:
        """Replace a reservation by what the request used; the day's spend after it (parse_spend)."""
        bucket = self._windows.get(res.account, {}).get(res.second)
        if bucket is not None:
            bucket[1] += prompt_tokens + completion_tokens - res.tokens
        counters = self._days.setdefault(res.day, {})
        for name, n in spend_increments(res, prompt_tokens, completion_tokens, nusd):
            counters[name] = counters.get(name, 0) + n
        return parse_spend(counters)

    async def spend(self, day: int | None = None) -> dict[str, dict[str, dict[str, int]]]:
        """A UTC day's spend (default: today), as parse_spend gives it."""
        return parse_spend(self._days.get(int(time.time()) // DAY if day is None else day, {}))

    # -- shared by every backend ---------------------------------------------------------------
    def add_topic(self, name: str, history: int | None = None) -> None:
        self.topics[name] = TopicState(name, deque(maxlen=history or self.default_history))

    def topic(self, name: str) -> TopicState:
        try:
            return self.topics[name]
        except KeyError:
            raise UnknownTopic(f"unknown topic {name!r}") from None

    def deliver(self, message: Message) -> None:
        """Fan one stored message out to this process's subscribers of its topic."""
        state = self.topics[message.topic]
        state.history.append(message)
        state.published += 1
        now = time.monotonic()
        state.recent.append(now)
        while state.recent[0] < now - RATE_WINDOW:  # bounded by the rate window, polled or not
            state.recent.popleft()
        delivered = 0
        for sub in tuple(state.subscribers):
            if sub.push(message):
                delivered += 1
            elif sub.overflowed:
                state.dropped += sub.missed
                state.cut_off += 1
                self._forget(sub)
        state.delivered += delivered
        for listener in state.listeners:
            listener(message)

    def listen(self, topic: str, listener: Callable[[Message], None]) -> None:
        """Call `listener` with every message of `topic` this process delivers (alert rules)."""
        self.topic(topic).listeners.append(listener)

    async def subscribe(
        self,
        topics: Iterable[str],
        last_id: int | None = None,
        *,
        sink: Sink,
        replay: int | None = None,
    ) -> Subscription:
        """Subscribe `sink` to `topics`: what is stored after `last_id` first, then live, with no gap
        and no duplicate. Without `last_id`, the last `replay` stored events (all when None) come
        first."""
        names = tuple(dict.fromkeys(topics))
        states = [self.topic(n) for n in names]
        # An id this broker never gave (another server's, or from before Redis was wiped) would
        # hold every event back: replay what history holds instead, and say so.
        ahead = last_id is not None and not await self.gave(last_id)
        sub = Subscription(names, sink)
        if last_id is not None and not ahead:
            sub.last_id = last_id
        # Registered before history is read, so nothing published meanwhile is missed; the
        # subscription holds live messages until the backlog is queued, and drops duplicates by id.
        for state in states:
            state.subscribers.add(sub)
        self.on_watchers_changed()
        backlog: list[Message] = []
        floors: dict[str, int] = {}  # per topic: the newest id left out of a limited replay
        gaps: list[Message] = []
        try:
            for name in names:
                history = await self.read_history(name, None if ahead else last_id)
                if last_id is None and replay is not None:
                    cut = max(0, len(history) - replay)
                    if cut:
                        floors[name] = history[cut - 1].id
                    history = history[cut:]
                elif last_id is not None:
                    gap = await self._gap(name, last_id, history, ahead)
                    if gap is not None:
                        gaps.append(gap)
                backlog.extend(history)
        except BaseException:
            self.unsubscribe(sub)
            raise
        sub.start(backlog, floors, gaps)
        return sub

    async def _gap(self, topic: str, last_id: int, history: list[Message], ahead: bool) -> Message | None:
        """The `gap` event for a reader resuming after `last_id` that missed events (or whose id is
        not ours); None when `history` holds all it missed.

        Ids are clock-based, not contiguous, so only an evicted id above `last_id` proves a loss.
        It is read after the history: an eviction meanwhile may report a loss that was not, but
        never hides one. The gap event's id sits just below what is replayed, so a reader that
        reconnects right after it resumes from there without being told again."""
        evicted = await self.evicted_id(topic, last_id)
        if history:
            evicted = min(evicted, history[0].id - 1)
        if ahead:
            reason = "unknown_id"
            message = (
                f"Last-Event-ID {last_id} is newer than any event here (another server's, or history "
                f"was wiped): replaying the history of {topic!r} that is kept"
            )
        elif evicted > last_id:
            reason = "expired"
            message = (
                f"events of {topic!r} after Last-Event-ID {last_id} left its history before this "
                "reconnect: some were lost; resuming from the oldest kept"
            )
        else:
            return None
        data = encode_data({"reason": reason, "last_event_id": last_id, "message": message})
        return Message.build(evicted, topic, GAP_EVENT, data, time.time())

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close()
        self._forget(sub)

    def _forget(self, sub: Subscription) -> None:
        for name in sub.topics:
            state = self.topics.get(name)
            if state is not None:
                state.subscribers.discard(sub)
        self.on_watchers_changed()

    def close_subscriptions(self) -> None:
        """End every open stream (server shutdown)."""
        for state in self.topics.values():
            for sub in tuple(state.subscribers):
                sub.close()
            state.subscribers.clear()


def check_requested_id(requested: str, last_id: int) -> int:
    """The id a feed asked for, when it can keep ids increasing; InvalidEvent saying why otherwise."""
    try:
        wanted = int(requested)
    except (TypeError, ValueError):
        raise InvalidEvent(f"Event.id must be an integer, got {requested!r:.40}") from None
    if wanted <= last_id:
        raise InvalidEvent(f"Event.id {wanted} is not above the last id {last_id}; leave id unset")
    return wanted


def backends() -> dict[str, str]:
    """Every installed backend, as URL scheme -> "module:Class": the built-in ones and those that
    packages register under the entry-point group `dashboard.brokers` (named by their scheme)."""
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {**found, **BUILT_IN}


def backend(scheme: str) -> type[Broker]:
    """The broker class serving URLs of `scheme`; BrokerConfigError when none is installed."""
    target = backends().get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in backends())
        named = f"scheme {scheme}://" if scheme else "URL without a scheme"
        raise BrokerConfigError(f"no broker serves the {named}: use {known}")
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Broker)):
        raise BrokerConfigError(f"broker {scheme!r}: {target} is not a dashboard.broker.Broker subclass")
    return cls


def from_url(url: str, *, history: int = 1000, prefix: str = "dashboard", lease_ttl: float = 5.0) -> Broker:
    """The broker for `url`, by its scheme: `memory://`, `redis://host:port/db` (`rediss://` for
    TLS), or a backend a package registered under `dashboard.brokers`.

    `prefix` and `lease_ttl` concern shared brokers: the first part of their key names, and how
    long a feed's lease outlives an instance that stopped renewing it."""
    return backend(urlsplit(url).scheme).from_url(url, history=history, prefix=prefix, lease_ttl=lease_ttl)
