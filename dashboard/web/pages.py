"""The dashboard page, rendered from the Jinja2 templates in templates/."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from dashboard.supervisor import STATUS_EVENT

TEMPLATES_DIR = Path(__file__).resolve().parent.parent.parent / "templates"
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


async def index(request: Request) -> Response:
    """GET /: one panel per configured panel, all fed by one multiplexed EventSource."""
    runtime = request.app.state.runtime
    config = runtime.config
    panels = []
    for panel in config.effective_panels():
        feed_class = config.topics[panel.topic].feed_class
        panels.append(
            {
                "topic": panel.topic,
                "title": panel.title,
                "view": panel.view,
                "size": panel.size,
                "events": [STATUS_EVENT, *feed_class.event_types],
            }
        )
    return templates.TemplateResponse(
        request, "index.html", {"panels": panels, "topics": list(config.topics)}, headers=SECURITY_HEADERS
    )
