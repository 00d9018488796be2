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

    async def publish(self, topic: str, event: Event) -> Message:
        history = self.topic(topic).history
        kind, data = event_type(event.event), encode_data(event.data)  # before an id is taken
        message = Message.build(self.next_id(event.id), topic, kind, data, time.time())
        if len(history) == history.maxlen:
            self._evicted[topic] = history[0].id  # appending it below drops the oldest
        self.deliver(message)
        return message

    def set_history(self, name: str, history: int) -> int:
        evicted = super().set_history(name, history)
        if evicted:
            self._evicted[name] = evicted
        return evicted

    async def evicted_id(self, topic: str, after: int) -> int:
        evicted = self._evicted.get(topic, 0)
        return evicted if evicted > after else 0

    async def gave(self, id: int) -> bool:
        return id <= max(self._last_id, self._started)

    async def read_history(self, topic: str, after_id: int | None) -> list[Message]:
        return self.topic(topic).after(after_id)
