"""What each completion measured: kept per completion, and recorded in Prometheus's default registry."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Histogram

TIME_TO_FIRST_TOKEN = Histogram(
    "dashboard_ai_time_to_first_token_seconds",
    "Time from a completion's request to its first token reaching the client.",
    ["provider", "model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0),
)


def ttft_totals() -> tuple[float, float]:
    """(sum of seconds, count) of the time to first token over every model and provider in this
    process."""
    total = count = 0.0
    for family in TIME_TO_FIRST_TOKEN.collect():
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
    return total, count


RELAY_OVERHEAD = Histogram(
    "dashboard_ai_relay_overhead_seconds",
    "Latency the relay itself adds before the first token (not waiting on the provider).",
    ["provider"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
COMPLETIONS = Counter(
    "dashboard_ai_completions",  # exposed as dashboard_ai_completions_total
    "Completions relayed, by provider and outcome (ok, error, timeout, cancelled, stopped).",
    ["provider", "outcome"],
)

QUEUE_WAIT = Histogram(
    "dashboard_ai_provider_queue_wait_seconds",
    "Time a request waited for room at a provider at its limits (max_concurrency, rpm, tpm).",
    ["provider"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
QUEUE_REFUSALS = Counter(
    "dashboard_ai_provider_queue_refusals",  # exposed as dashboard_ai_provider_queue_refusals_total
    "Requests refused while waiting for room at a provider: its queue full, or the first_token timeout.",
    ["provider", "reason"],
)


@functools.lru_cache(maxsize=4096)
def labelled(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, looked up once: prometheus_client checks the values and takes a
    lock on every call, which is most of the cost of a completion's metrics. Label values are
    bounded (configured names, outcomes), and metrics are never removed, so the child stays valid."""
    return metric.labels(*values)


def now() -> float:
    return time.perf_counter()


@dataclass(slots=True)
class Measure:
    """Timestamps (perf_counter seconds) and counts of one completion, from request to end."""

    model: str
    label: str = ""  # the model as a metrics label: a configured name or pattern, never free text
    started: float = field(default_factory=now)
    first_attempt: float | None = None  # the relay is done preparing and asks a provider
    first_event_in: float | None = None  # the serving provider's first event arrived
    first_event_out: float | None = None  # ... and was handed on (written or published)
    first_token_out: float | None = None  # the first chunk carrying text was handed on
    ended: float | None = None
    provider: str = ""
    simulated: bool = False
    attempts: int = 0
    text_chunks: int = 0
    text_chars: int = 0  # of the answer's text and tool calls received: the estimate without usage
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    outcome: str = "ok"

    def ttft(self) -> float | None:
        token_out = self.first_token_out or self.first_event_out
        return None if token_out is None else token_out - self.started

    def overhead(self) -> float | None:
        """Preparing the request plus handing the first event on: the relay's own share of TTFT."""
        if self.first_attempt is None or self.first_event_in is None or self.first_event_out is None:
            return None
        return (self.first_attempt - self.started) + (self.first_event_out - self.first_event_in)

    def summary(self, price: Any = None) -> dict[str, Any]:
        """The measured fields of a `done` event (and of the server's log line)."""
        ended = self.ended or now()
        ttft, overhead = self.ttft(), self.overhead()
        completion_tokens = (self.usage or {}).get("completion_tokens") or self.text_chunks
        first = self.first_token_out or self.first_event_out
        streaming_s = ended - first if first is not None else 0.0
        cost = None
        if price is not None and self.usage is not None:
            cost = price(self.usage.get("prompt_tokens", 0), self.usage.get("completion_tokens", 0))
        return {
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "ttft_ms": None if ttft is None else round(ttft * 1000, 3),
            "relay_overhead_ms": None if overhead is None else round(overhead * 1000, 3),
            "tokens_per_s": round(completion_tokens / streaming_s, 2) if streaming_s > 0.001 else None,
            "duration_ms": round((ended - self.started) * 1000, 3),
            "cost_usd": None if cost is None else round(cost, 8),
            "provider": self.provider,
            "simulated": self.simulated,
        }

    def record(self) -> None:
        """Into the Prometheus metrics (once, when the completion ends)."""
        provider = self.provider or "none"
        labelled(COMPLETIONS, provider, self.outcome).inc()
        ttft, overhead = self.ttft(), self.overhead()
        if ttft is not None:
            labelled(TIME_TO_FIRST_TOKEN, provider, self.label or self.model).observe(ttft)
        if overhead is not None:
            labelled(RELAY_OVERHEAD, provider).observe(overhead)
