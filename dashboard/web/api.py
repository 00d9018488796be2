"""JSON APIs: topics, alerts and health."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse

if TYPE_CHECKING:
    from dashboard.alerts import Alerts
    from dashboard.auth import Access
    from dashboard.broker import Broker
    from dashboard.config import Config
    from dashboard.presence import Presence
    from dashboard.supervisor import Supervisor
    from dashboard.web.admission import Admission


@dataclass(frozen=True)
class API:
    """The JSON endpoints, bound to the parts of the server they report on."""

    access: Access
    config: Config
    broker: Broker
    supervisor: Supervisor
    presence: Presence
    alert_rules: Alerts
    admission: Admission
    config_status: Callable[[], dict[str, Any]]  # the config's generation and the last reload's error
    instance: str  # which process answers: host:pid (one of several behind `serve --workers N`)

    async def topics(self, request: Request) -> JSONResponse:
        """GET /api/topics: each topic's feed type, subscribers, last event id, rate and feed state."""
        viewer = self.access.viewer(request)
        body = {}
        for name, topic in self.config.topics.items():
            if not self.access.may_read(viewer, name):
                continue  # a private topic's name is not listed to those who may not read it
            state = self.broker.topic(name)
            runner = self.supervisor.runners[name]
            body[name] = {
                "feed": topic.feed,
                "title": topic.title or name,
                "subscribers": len(state.subscribers),
                "watching": self.presence.watching(name),  # streams on every instance sharing the broker
                "last_event_id": state.last_id,
                "rate": round(state.rate(), 3),
                "published": state.published,
                "delivered": state.delivered,
                "dropped": state.dropped,
                "status": runner.as_json(),
            }
        return JSONResponse({"instance": self.instance, "topics": body})

    async def alerts(self, request: Request) -> JSONResponse:
        """GET /api/alerts: each rule on a topic the viewer may read, with its state, last value and
        its delivery attempts (never a webhook's secret, path or query)."""
        viewer = self.access.viewer(request)
        rules = self.alert_rules.as_json(lambda topic: self.access.may_read(viewer, topic))
        return JSONResponse({"alerts": rules})

    async def healthz(self, request: Request) -> JSONResponse:
        """GET /healthz: liveness and readiness; 503 while the broker is down, the server sheds new
        streams, or it stops."""
        readable = set(self.access.readable(self.access.viewer(request), list(self.config.topics)))
        runners = {name: r for name, r in self.supervisor.runners.items() if name in readable}
        broker_ok = self.broker.healthy
        status = "ok" if broker_ok else "degraded"
        if self.admission.stopping:
            status = "stopping"
        elif self.admission.shedding:
            status = "overloaded"
        body = {
            "status": status,
            "instance": self.instance,
            "broker": {"url_scheme": self.config.broker.url.split(":", 1)[0], "ok": broker_ok},
            "feeds": {name: runner.state for name, runner in runners.items()},
            # the topics whose feed runs on this instance (with a shared broker, one instance each)
            "leading": sorted(name for name, runner in runners.items() if runner.leader),
            # open, the most this process holds, the most one client may hold, shedding
            "streams": self.admission.as_json(),
            "config": self.config_status(),
        }
        return JSONResponse(body, status_code=200 if status == "ok" else 503)
