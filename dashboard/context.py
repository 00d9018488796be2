"""What a feed gets from the running server: `self.context`, a FeedContext. Built-in feeds use
nothing else (and the public modules `dashboard`, `dashboard.http`, `dashboard.ai`), so any of
them is an example to copy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dashboard.events import Event, Message
from dashboard.tasks import TaskGroup

if TYPE_CHECKING:
    from dashboard.auth import Access
    from dashboard.broker import Broker
    from dashboard.config import Config
    from dashboard.relay import Relay
    from dashboard.relay.keys import Keys
    from dashboard.relay.lifecycle import Completions
    from dashboard.supervisor import Supervisor


@dataclass(frozen=True)
class TopicStats:
    """One topic's counters in this process, as the `server` feed reports them."""

    subscribers: int
    published: int
    delivered: int
    dropped: int
    restarts: int


class FeedContext:
    """The running server as one feed sees it.

    - `topic`, `options`: the feed's topic and its validated options
    - `config`: the whole server configuration (read-only: limits such as `config.server.max_body`)
    - `publish(event)`: store an event on the feed's topic (what `Feed.publish` calls)
    - `claim(key, ttl)` / `unclaim(key)`: deduplicate across instances sharing the broker
    - `relay`: the AI relay's providers (`dashboard.ai.Relay`); completions go through `completions`
    - `access`: viewer access and api tokens for the feed's routes: `access.require(request, [topic])`
    - `keys`: AI api keys and spend (`dashboard.ai.Keys`): `by_token`, `for_name`, `today()`
    - `completions`: one completion's whole life (`dashboard.ai.Completions`): `admit(account, body,
      measure)`, then `async with completion:` settles, measures and logs it however it ends
    - `tasks`: a task group for work the feed's routes start; cancelled when the server stops
    - `topics()`: every topic's counters in this process; `connections()`: its open streams
    """

    def __init__(
        self,
        topic: str,
        options: Any,
        *,
        config: Config,
        broker: Broker,
        relay: Relay,
        access: Access,
        keys: Keys,
        completions: Completions,
        supervisor: Supervisor,
    ) -> None:
        self.topic = topic
        self.options = options
        self.config = config
        self.relay = relay
        self.access = access
        self.keys = keys
        self.completions = completions
        self.tasks = TaskGroup()
        self._broker = broker
        self._supervisor = supervisor

    async def publish(self, event: Event) -> Message:
        """As `Feed.publish`: through the supervisor, so the feed's own task publishes under its lease."""
        return await self._supervisor.publish(self.topic, event)

    async def claim(self, key: str, ttl: float) -> bool:
        """True the first time `key` is claimed on this topic within `ttl` seconds, on any instance."""
        return await self._broker.claim(f"{self.topic}:{key}", ttl)

    async def unclaim(self, key: str) -> None:
        await self._broker.unclaim(f"{self.topic}:{key}")

    def connections(self) -> int:
        """Open streams in this process: one per browser tab, whose one stream reads every topic
        of its panels (a topic's `subscribers` counts that tab once per topic)."""
        return len(set().union(*(state.subscribers for state in list(self._broker.topics.values()))))

    def topics(self) -> dict[str, TopicStats]:
        runners = self._supervisor.runners
        stats = {}
        for name, state in list(self._broker.topics.items()):
            runner = runners.get(name)
            stats[name] = TopicStats(
                subscribers=len(state.subscribers),
                published=state.published,
                delivered=state.delivered,
                dropped=state.dropped,
                restarts=runner.restarts if runner else 0,
            )
        return stats
