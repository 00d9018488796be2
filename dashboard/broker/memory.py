"""The in-process broker: history in memory, ids from a clock-based sequence."""

from __future__ import annotations

import time

from dashboard.broker.contract import Broker, check_requested_id
from dashboard.events import Event, Message, encode_data, event_type


class MemoryBroker(Broker):
    """Keeps each topic's history in a ring in this process.

    Ids are microseconds since the epoch, bumped to stay strictly increasing, so a browser that
    reconnects after a server restart still resumes in order and misses nothing published since.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._last_id = 0
        self._started = time.time_ns() // 1000  # ids from before a restart are below this
        self._evicted: dict[str, int] = {}

    def next_id(self, requested: str | None = None) -> int:
        if requested is None:
            self._last_id = max(self._last_id + 1, time.time_ns() // 1000)
        else:
            self._last_id = check_requested_id(requested, self._last_id)
        return self._last_id

    def build(self, topic: str, event: Event) -> Message:
        """The message `event` is stored as on `topic`, with the next id (UnknownTopic, or
        InvalidEvent for what no reader could be sent, before an id is taken)."""
        self.topic(topic)
        kind, data = event_type(event.event), encode_data(event.data)
        return Message.build(self.next_id(event.id), topic, kind, data, time.time())

    async def publish(self, topic: str, event: Event) -> Message:
        message = self.build(topic, event)
        self.deliver(message)
        return message

    def deliver(self, message: Message) -> None:
        history = self.topics[message.topic].history
        if len(history) == history.maxlen:  # appending it drops the oldest
            self.dropped(message.topic, history[0].id)
        super().deliver(message)

    def set_history(self, name: str, history: int) -> int:
        evicted = super().set_history(name, history)
        if evicted:
            self.dropped(name, evicted)
        return evicted

    def dropped(self, topic: str, id: int) -> None:
        """`topic`'s history dropped `id` (and every older one) to make room."""
        self._evicted[topic] = id

    async def evicted_id(self, topic: str, after: int) -> int:
        evicted = self._evicted.get(topic, 0)
        return evicted if evicted > after else 0

    async def gave(self, id: int) -> bool:
        return id <= max(self._last_id, self._started)

    async def read_history(self, topic: str, after_id: int | None) -> list[Message]:
        return self.topic(topic).after(after_id)
