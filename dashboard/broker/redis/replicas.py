"""`broker.min_replicas`: a publish acknowledged only once that many replicas hold its event.

Redis replicates asynchronously, so an event the primary stored and acknowledged may be missing on
the replica promoted when the primary dies. After the publish script, WAIT on the same connection
(WAIT counts the replicas holding that connection's writes) closes that window for the replicas
it counted. It cannot undo the write: an event too few replicas confirmed is refused (503) yet
stored on the primary, where readers may see it and a failover may lose it.

The supervisor publishes a refused event again, as the same Event object. That event is not
stored twice: if the primary now holds it, it is only confirmed, by a write after it on one
connection and a WAIT there (a replica holding the later write holds the event too).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from dashboard.errors import BrokerUnavailable
from dashboard.events import Event

REPLICA_WAIT_MS = 1000  # how long a publish waits for the replicas to hold its event

# KEYS: the topic's stream, the id counter. ARGV: the stream entry id. Whether the stream holds
# the entry; if so, a write (the counter, unchanged) that replicates after it.
CONFIRM = """
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then
  return 0
end
redis.call('INCRBY', KEYS[2], 0)
return 1
"""


class ReplicaWait:
    """Publishing with `min_replicas`: store, then WAIT; remember what was stored unconfirmed."""

    def __init__(self, min_replicas: int, where: str) -> None:
        self.min_replicas = min_replicas
        self.where = where
        self._unconfirmed: dict[str, tuple[Event, bytes]] = {}  # topic -> (event, its stored id)

    async def store(
        self,
        client: aioredis.Redis,
        publish: AsyncScript,
        topic: str,
        event: Event,
        keys: list[str],
        args: list[Any],
    ) -> bytes:
        """The id of `event`, stored by `publish(keys, args)` (or earlier) and held by the replicas."""
        stored: bytes | None = None
        async with client.client() as connection:
            earlier = self._unconfirmed.pop(topic, None)
            if earlier is not None and earlier[0] is event:
                confirm = client.register_script(CONFIRM)
                if await confirm(keys=[keys[1], keys[0]], args=[earlier[1] + b"-0"], client=connection):
                    stored = earlier[1]
            if stored is None:
                stored = await publish(keys=keys, args=args, client=connection)
            self._unconfirmed[topic] = (event, stored)  # until WAIT answers enough
            held = await connection.execute_command("WAIT", self.min_replicas, REPLICA_WAIT_MS)
        if held < self.min_replicas:
            raise BrokerUnavailable(
                f"Redis at {self.where} stored event {stored.decode()} but only {held} of the "
                f"{self.min_replicas} replicas asked for (broker.min_replicas) confirmed it within "
                f"{REPLICA_WAIT_MS} ms: it may be delivered, and may be lost if the primary fails"
            )
        del self._unconfirmed[topic]
        return stored
