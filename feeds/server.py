"""The server watching itself: connections (viewers), subscribers, event rates, drops, feed restarts and
AI time to first token.

Reads the running server through `self.context.topics()` (each topic's counters in this process)
and `dashboard.ai.ttft_totals()`; rates are the change of those counters over the last interval.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any

from pydantic import Field

from dashboard import Event, Feed
from dashboard.ai import ttft_totals


class Server(Feed):
    """This server's own health: subscribers, events/s, drops, feed restarts, AI time to first token."""

    default_view = "json"

    class Options(Feed.Options):
        interval: float = Field(2.0, ge=0.1, description="seconds between reports")
        per_topic: bool = Field(True, description="also report each topic's numbers under `topics`")

    def totals(self) -> dict[str, Any]:
        topics = {name: asdict(stats) for name, stats in self.context.topics().items()}
        return {
            "at": time.monotonic(),
            "topics": topics,
            "connections": self.context.connections(),
            "ttft": ttft_totals(),
        }

    def report(self, before: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
        seconds = max(now["at"] - before["at"], 1e-9)
        topics: dict[str, dict[str, Any]] = {}
        for name, t in now["topics"].items():
            prev = before["topics"].get(name, t)
            topics[name] = {
                "subscribers": t["subscribers"],
                "published_per_s": round((t["published"] - prev["published"]) / seconds, 2),
                "delivered_per_s": round((t["delivered"] - prev["delivered"]) / seconds, 2),
                "dropped": t["dropped"],
                "restarts": t["restarts"],
            }
        data: dict[str, Any] = {
            name: round(sum(t[name] for t in topics.values()), 2)
            for name in ("subscribers", "published_per_s", "delivered_per_s", "dropped", "restarts")
        }
        data["connections"] = now["connections"]  # viewers: a tab is one connection, whatever its panels
        data["ai_ttft_seconds"] = None
        if now["ttft"] is not None and before["ttft"] is not None:
            seconds_sum = now["ttft"][0] - before["ttft"][0]
            count = now["ttft"][1] - before["ttft"][1]
            if count > 0:
                data["ai_ttft_seconds"] = round(seconds_sum / count, 4)
        if self.options.per_topic:
            data["topics"] = topics
        return data

    async def stream(self):
        before = self.totals()
        while True:
            await asyncio.sleep(self.options.interval)
            now = self.totals()
            yield Event(data=self.report(before, now))
            before = now
