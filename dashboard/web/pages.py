"""The dashboard page, rendered from the Jinja2 templates in templates/."""

from __future__ import annotations

import sys
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from dashboard.broker import GAP_EVENT
from dashboard.supervisor import STATUS_EVENT


def _templates_dir() -> Path:
    """templates/ beside the package (a checkout), else where a regular install put it."""
    checkout = Path(__file__).resolve().parent.parent.parent / "templates"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "sse-dashboard" / "templates"


TEMPLATES_DIR = _templates_dir()
templates = Jinja2Templates(directory=TEMPLATES_DIR)

# Scripts and styles come only from the app itself: feed text can never run as code.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

# The views the page knows (dashboard/static/views/*.js); a feed suggesting another gets "json".
VIEWS = ("chart", "stat", "list", "log", "chat", "json")


def _shown_state(state: str) -> str:
    """A feed's state as its panel first shows it; events and status events update it live."""
    return {"idle": "ready", "starting": "waiting", "standby": "running"}.get(state, state)


async def index(request: Request) -> Response:
    """GET /: one panel per configured panel, all fed by one multiplexed EventSource."""
    runtime = request.app.state.runtime
    config = runtime.config
    panels = []
    for number, panel in enumerate(config.effective_panels(), 1):
        feed_class = config.topics[panel.topic].feed_class
        # Only what the page needs: never the topic's feed options (they may hold secrets).
        panels.append(
            {
                "id": f"panel-{number}",
                "topic": panel.topic,
                "title": panel.title,
                "view": panel.view if panel.view in VIEWS else "json",
                "size": panel.size,
                "events": [STATUS_EVENT, GAP_EVENT, *feed_class.event_types],
                "state": _shown_state(runtime.supervisor.runners[panel.topic].state),
                "options": panel.options,
            }
        )
    context = {
        "panels": panels,
        "topics": list(dict.fromkeys(panel["topic"] for panel in panels)),
        "views": sorted({panel["view"] for panel in panels}),  # each view's script is loaded once
    }
    return templates.TemplateResponse(request, "index.html", context, headers=SECURITY_HEADERS)
