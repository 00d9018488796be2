"""The local fan-out every backend shares: topics, subscribers' sinks, replay with no gap and no
duplicate, and the counters /api/topics reports.

A backend stores events (see contract.py); `Fanout` hands what is stored to this process's
subscribers: `deliver(message)` once per stored message, `subscribe(...)` to start a stream.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from dashboard.errors import UnknownTopic
from dashboard.events import GAP_EVENT, STATUS_EVENT, Message, encode_data

RATE_WINDOW = 10.0  # seconds over which /api/topics reports a topic's event rate


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

    def close(self, retry_ms: int | None = None) -> None:
        """No more messages: send what was taken, then end; with `retry_ms`, first tell the reader
        to come back after that many milliseconds (the server restarts)."""
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

    def close(self, retry_ms: int | None = None) -> None:
        """End the stream: the sink sends what it has and finishes (see Sink.close)."""
        if not self.closed:
            self.closed = True
            self.sink.close(retry_ms)


@dataclass
class TopicState:
    """What the broker keeps per topic in this process."""

    name: str
    history: deque[Message]
    subscribers: set[Subscription] = field(default_factory=set)
    published: int = 0  # events delivered here (stored here, or by another process sharing the broker)
    stored: int = 0  # of them, stored by a shared broker from this process
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


class Fanout:
    """This process's topics and their subscribers; the half of a `Broker` every backend shares.

    It reads what is stored through the backend's history verbs (`read_history`, `evicted_id`,
    `gave`), which `Broker` declares and each backend implements.
    """

    def __init__(self, *, history: int = 1000) -> None:
        self.default_history = history
        self.topics: dict[str, TopicState] = {}
        #: called when a topic gains or loses a local subscriber (presence counts them)
        self._on_watchers_changed: list[Callable[[], None]] = []  # see when_watchers_change()

    async def read_history(self, topic: str, after_id: int | None) -> list[Message]:
        raise NotImplementedError  # the backend's: see Broker.read_history

    async def evicted_id(self, topic: str, after: int) -> int:
        raise NotImplementedError  # the backend's: see Broker.evicted_id

    async def gave(self, id: int) -> bool:
        raise NotImplementedError  # the backend's: see Broker.gave

    def add_topic(self, name: str, history: int | None = None) -> None:
        self.topics[name] = TopicState(name, deque(maxlen=history or self.default_history))

    def set_history(self, name: str, history: int) -> int:
        """Keep `history` events of topic `name` from now on (a reload changed it); the newest id
        it dropped to fit, 0 when none."""
        state = self.topic(name)
        kept = state.history
        if kept.maxlen == history:
            return 0
        state.history = deque(kept, maxlen=history)
        dropped = len(kept) - len(state.history)
        return kept[dropped - 1].id if dropped > 0 else 0

    def remove_topic(self, name: str, data: str) -> None:
        """Stop serving topic `name` (a reload removed it). Each of its streams is told first, by
        a `status` notice carrying `data`; a stream of that topic alone then ends, while a
        multiplexed one goes on with its other topics."""
        state = self.topics.pop(name)
        for sub in state.subscribers:
            sub.sink.notice(name, STATUS_EVENT, data)
            sub.topics = tuple(topic for topic in sub.topics if topic != name)
            if not sub.topics:
                sub.close()
        for callback in self._on_watchers_changed:
            callback()

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

    def when_watchers_change(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever a topic gains or loses a local subscriber (presence counts them)."""
        self._on_watchers_changed.append(callback)

    def listen(self, topic: str, listener: Callable[[Message], None]) -> None:
        """Call `listener` with every message of `topic` this process delivers (alert rules)."""
        self.topic(topic).listeners.append(listener)

    def unlisten(self, topic: str, listener: Callable[[Message], None]) -> None:
        """Stop calling `listener` (a rule a reload removed)."""
        state = self.topics.get(topic)
        if state is not None and listener in state.listeners:
            state.listeners.remove(listener)

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
        for callback in self._on_watchers_changed:
            callback()
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
        for callback in self._on_watchers_changed:
            callback()

    def close_subscriptions(self, retry_ms: Callable[[], int] | None = None) -> None:
        """End every open stream (server shutdown); with `retry_ms`, tell each to come back after
        the milliseconds it gives (spread, so that a crowd does not return at one instant)."""
        for state in self.topics.values():
            for sub in tuple(state.subscribers):
                sub.close(None if retry_ms is None else retry_ms())
            state.subscribers.clear()
