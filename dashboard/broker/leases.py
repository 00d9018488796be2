"""Leadership of a topic's feed: the `Lease` an instance holds, and the `fence` it publishes under."""

from __future__ import annotations

import asyncio
from contextvars import ContextVar


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
