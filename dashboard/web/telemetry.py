"""GET /metrics: the server's own counters in the Prometheus text format.

Broker and supervisor counters are read when Prometheus scrapes (a custom collector), so the
broadcast path never calls prometheus-client. HTTP requests are counted by a small ASGI middleware
by route template (`/sse/{topic}`, never the raw path) and status. Metrics other parts of the
process register in prometheus-client's default registry (AI time to first token, process and
Python metrics) are served too.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dashboard.relay.metrics import labelled

if TYPE_CHECKING:
    from dashboard.auth import Access
    from dashboard.broker import Broker
    from dashboard.relay.keys import Keys
    from dashboard.supervisor import Supervisor
    from dashboard.web.admission import Admission

UNMATCHED = "<unmatched>"
KEY_SERIES = "dashboard_ai_key_"  # per api key (by name): requests, tokens, spend, refusals
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
SYNC_EVERY = 1.0  # seconds between updates of the shared series under `serve --workers N`


class RuntimeCollector(Collector):
    """Per-topic broker counters and feed restarts, read from the running server at scrape time."""

    def __init__(
        self, broker: Broker, supervisor: Supervisor, admission: Admission, *, shared: bool = False
    ) -> None:
        self.broker = broker
        self.supervisor = supervisor
        self.admission = admission
        # Added up over the processes sharing a broker, each event counts once where it was stored
        self.shared = shared

    def collect(self) -> Iterator[Metric]:
        subscribers = GaugeMetricFamily(
            "dashboard_topic_subscribers", "Connected SSE subscribers per topic", labels=["topic"]
        )
        published = CounterMetricFamily(
            "dashboard_events_published", "Events published per topic", labels=["topic"]
        )
        delivered = CounterMetricFamily(
            "dashboard_events_delivered",
            "Event deliveries to subscribers per topic (one per subscriber per event)",
            labels=["topic"],
        )
        dropped = CounterMetricFamily(
            "dashboard_events_dropped",
            "Events subscribers missed when cut off for falling more than server.max_backlog frames "
            "behind: the ones waiting for them and the one that did not fit (a multiplexed "
            "subscriber's are counted on the topic whose event cut it off); it resumes with Last-Event-ID",
            labels=["topic"],
        )
        cut_off = CounterMetricFamily(
            "dashboard_subscribers_cut_off",
            "Subscribers cut off for falling more than server.max_backlog frames behind",
            labels=["topic"],
        )
        restarts = CounterMetricFamily(
            "dashboard_feed_restarts", "Times a topic's feed failed and was restarted", labels=["topic"]
        )
        running = GaugeMetricFamily(
            "dashboard_feed_running", "1 while the topic's feed is running, else 0", labels=["topic"]
        )
        direct = GaugeMetricFamily(
            "dashboard_streams_direct",
            "Open SSE streams written straight to their sockets (the fast path; see the startup log)",
            value=self.admission.direct,
        )
        runners = self.supervisor.runners
        for name, state in list(self.broker.topics.items()):
            subscribers.add_metric([name], len(state.subscribers))
            published.add_metric([name], state.stored if self.shared else state.published)
            delivered.add_metric([name], state.delivered)
            dropped.add_metric([name], state.dropped)
            cut_off.add_metric([name], state.cut_off)
            runner = runners.get(name)
            if runner is not None:
                restarts.add_metric([name], runner.restarts)
                running.add_metric([name], 1 if runner.state == "running" else 0)
        yield from (subscribers, published, delivered, dropped, cut_off, restarts, running, direct)


class DefaultRegistry(Collector):
    """Serves what is registered in prometheus-client's process-wide default registry."""

    def describe(self) -> list[Metric]:
        return []  # names are checked where they are registered, not again here

    def collect(self) -> Iterator[Metric]:
        return REGISTRY.collect()


def shared_dir() -> str | None:
    """Where the processes of `serve --workers N` keep their metrics, so that each one's /metrics
    answers for all of them (prometheus-client's multiprocess mode); None for a lone process."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class SharedRuntime:
    """The runtime collector's series, kept where every worker's /metrics reads them (a lone
    process reads them live instead). Brought up to date each `SYNC_EVERY` seconds by `run`, so
    that serving events never calls prometheus-client."""

    def __init__(self, collector: RuntimeCollector) -> None:
        self.collector = collector
        self.families: dict[str, Counter | Gauge] = {}
        self.seen: dict[tuple[str, tuple[str, ...]], float] = {}  # counters: the value last added up to

    def sync(self) -> None:
        for metric in self.collector.collect():
            for sample in metric.samples:
                names = sorted(sample.labels)
                family = self.families.get(metric.name)
                if family is None:
                    shared = Counter if metric.type == "counter" else Gauge
                    mode = {} if shared is Counter else {"multiprocess_mode": "livesum"}
                    family = shared(metric.name, metric.documentation, names, registry=None, **mode)
                    self.families[metric.name] = family
                values = tuple(sample.labels[name] for name in names)
                child = family.labels(*values) if values else family
                if isinstance(child, Gauge):
                    child.set(sample.value)
                else:  # a counter only goes up: add what it gained since the last sync
                    key = (metric.name, values)
                    gained = sample.value - self.seen.get(key, 0.0)
                    if gained > 0:
                        child.inc(gained)
                    self.seen[key] = sample.value

    async def run(self) -> None:
        while True:
            self.sync()
            await asyncio.sleep(SYNC_EVERY)


class Telemetry:
    """One app's metrics: its own registry (so several apps in one process never clash). Under
    `serve --workers N` (`shared_dir()`), every worker's metrics, added up."""

    def __init__(self, broker: Broker, supervisor: Supervisor, admission: Admission) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        collector = RuntimeCollector(broker, supervisor, admission, shared=bool(shared_dir()))
        self.shared: SharedRuntime | None = None
        if shared_dir():
            MultiProcessCollector(self.registry)
            self.shared = SharedRuntime(collector)
        else:
            self.registry.register(collector)
            self.registry.register(DefaultRegistry())
        self.http_requests = Counter(
            "dashboard_http_requests",
            "HTTP requests by method, route template and status (counted when the response starts)",
            ["method", "route", "status"],
            registry=None if self.shared else self.registry,
        )

    def count(self, method: str, route: str, status: int) -> None:
        """One request answered: `route` is its template (`/sse/{topic}`), never the raw path."""
        method = method if method in METHODS else "other"  # bounded label values
        labelled(self.http_requests, method, route, str(status)).inc()


class Metrics:
    """GET /metrics, bound to the app's telemetry and to who may read which series."""

    def __init__(self, telemetry: Telemetry, access: Access, keys: Keys, topics: list[str]) -> None:
        self.registry = telemetry.registry
        self.access = access
        self.keys = keys
        self.topics = topics

    async def endpoint(self, request: Request) -> Response:
        """GET /metrics: with viewers configured, only the series of topics the caller may read;
        with viewers or api tokens, the per-key series only for an api token or a reader of the
        spend topic (see `Access.metrics_reader`)."""
        encoder, content_type = choose_encoder(request.headers.get("accept"))
        access = self.access
        spend = [feed.topic for feed in self.keys.listeners]
        viewer, sees_keys = access.metrics_reader(request, spend)
        hidden = set(self.topics) - set(access.readable(viewer, self.topics))
        registry = self.registry
        if hidden or not sees_keys:
            registry = Hiding(self.registry, hidden, hide_keys=not sees_keys)
        return Response(encoder(registry), headers={"Content-Type": content_type})


class Hiding:
    """A registry's metrics without the samples of `hidden` topics (by `topic` label, or a feed
    route `/feeds/<topic>/...`), so a private topic's name is not shown to who may not read it;
    and, with `hide_keys`, without the per-key series (`dashboard_ai_key_...`)."""

    def __init__(self, registry: CollectorRegistry, hidden: set[str], *, hide_keys: bool = False) -> None:
        self.registry = registry
        self.hidden = hidden
        self.hide_keys = hide_keys

    def _shown(self, labels: dict[str, str]) -> bool:
        if labels.get("topic") in self.hidden:
            return False
        route = labels.get("route", "")
        return not (route.startswith("/feeds/") and route.split("/")[2] in self.hidden)

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            if self.hide_keys and metric.name.startswith(KEY_SERIES):
                continue
            metric.samples = [s for s in metric.samples if self._shown(s.labels)]
            yield metric


def route_template(scope: Scope) -> str:
    """The template of the route that served `scope` (`/feeds/alerts/webhook`, `/sse/{topic}`).

    Starlette leaves the matched route in `scope["route"]`, and each Mount extends `root_path`.
    """
    route = scope.get("route")
    if route is None:
        return UNMATCHED
    prefix = scope.get("root_path", "")[len(scope.get("_telemetry_root", "")) :]
    if isinstance(route, Mount):
        return prefix + "/{path}"
    return prefix + getattr(route, "path", "")


class RequestMetrics:
    """Pure ASGI middleware counting requests by route template and status; streams pass untouched."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope["_telemetry_root"] = scope.get("root_path", "")
        started = False

        async def send_counted(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                self.telemetry.count(scope["method"], route_template(scope), message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        except Exception:
            if not started:
                self.telemetry.count(scope["method"], route_template(scope), 500)
            raise
