"""Feeds the tests load by dotted path (`tests.plugin_feeds:Flaky`) to drive the server's own numbers."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY, Histogram
from pydantic import Field

from dashboard import Event, Feed

TTFT = "dashboard_ai_time_to_first_token_seconds"


class Flaky(Feed):
    """Publishes one event, then fails: the supervisor restarts it over and over."""

    async def stream(self):
        yield Event(data={"about_to": "fail"})
        raise RuntimeError("planned failure")


def ttft_histogram() -> Histogram:
    """The AI time-to-first-token histogram in the default registry (made here if nothing made it)."""
    try:
        return Histogram(TTFT, "AI time to first token", ["provider", "model"])
    except ValueError:  # already registered by the AI relay in this process
        return REGISTRY._names_to_collectors[TTFT]  # type: ignore[return-value]


class TtftProbe(Feed):
    """Observes a fixed time to first token, as the AI relay would for each streamed answer."""

    class Options(Feed.Options):
        seconds: float = Field(0.25, gt=0)
        interval: float = Field(0.05, gt=0)

    async def stream(self):
        histogram = ttft_histogram()
        while True:
            histogram.labels("probe", "probe-model").observe(self.options.seconds)
            yield Event(data={"observed": self.options.seconds})
            await asyncio.sleep(self.options.interval)
