"""JSON APIs: topics and health."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse


async def topics(request: Request) -> JSONResponse:
    """GET /api/topics: each topic's feed type, subscribers, last event id, rate and feed state."""
    runtime = request.app.state.runtime
    viewer = runtime.access.viewer(request)
    body = {}
    for name, topic in runtime.config.topics.items():
        if not runtime.access.may_read(viewer, name):
            continue  # a private topic's name is not listed to those who may not read it
        state = runtime.broker.topic(name)
        runner = runtime.supervisor.runners[name]
        body[name] = {
            "feed": topic.feed,
            "title": topic.title or name,
            "subscribers": len(state.subscribers),
            "watching": runtime.presence.watching(name),  # streams on every instance sharing the broker
            "last_event_id": state.last_id,
            "rate": round(state.rate(), 3),
            "published": state.published,
            "delivered": state.delivered,
            "dropped": state.dropped,
            "status": runner.as_json(),
        }
    return JSONResponse({"topics": body})


async def alerts(request: Request) -> JSONResponse:
    """GET /api/alerts: each rule on a topic the viewer may read, with its state, last value and
    its delivery attempts (never a webhook's secret, path or query)."""
    runtime = request.app.state.runtime
    viewer = runtime.access.viewer(request)
    rules = runtime.alerts.as_json(lambda topic: runtime.access.may_read(viewer, topic))
    return JSONResponse({"alerts": rules})


async def healthz(request: Request) -> JSONResponse:
    """GET /healthz: liveness and readiness; 503 while the broker is down, the server sheds new
    streams, or it stops."""
    runtime = request.app.state.runtime
    readable = set(runtime.access.readable(runtime.access.viewer(request), list(runtime.config.topics)))
    runners = {name: r for name, r in runtime.supervisor.runners.items() if name in readable}
    broker_ok = runtime.broker.healthy
    status = "ok" if broker_ok else "degraded"
    if runtime.stopping:
        status = "stopping"
    elif runtime.admission.shedding:
        status = "overloaded"
    body = {
        "status": status,
        "broker": {"url_scheme": runtime.config.broker.url.split(":", 1)[0], "ok": broker_ok},
        "feeds": {name: runner.state for name, runner in runners.items()},
        # the topics whose feed runs on this instance (with a shared broker, one instance each)
        "leading": sorted(name for name, runner in runners.items() if runner.leader),
        # open, the most this process holds, the most one client may hold, shedding
        "streams": runtime.admission.as_json(),
    }
    return JSONResponse(body, status_code=200 if status == "ok" else 503)
