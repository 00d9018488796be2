"""The dashboard page, rendered from the Jinja2 templates in templates/."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from dashboard.broker import GAP_EVENT
from dashboard.supervisor import STATUS_EVENT
from dashboard.web.access import SESSION_COOKIE, VIEWER_COOKIE, Viewer, new_session
from dashboard.web.errors import HTTPError


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
    """GET /: the panels this viewer may read, all fed by one multiplexed EventSource.

    With viewers configured, `/?token=...` checks the token, keeps it in an HttpOnly cookie and
    redirects to the page without it, so the token leaves the address bar and the history."""
    runtime = request.app.state.runtime
    access = runtime.access
    token = request.query_params.get("token")
    if access.enabled and token is not None:
        return _sign_in(request, token)
    try:
        viewer = access.viewer(request)
    except HTTPError as exc:  # an expired or forged cookie: say so, and forget it
        response = _page(request, [], exc.message, status=401)
        response.delete_cookie(VIEWER_COOKIE, path="/")
        return response
    panels = [p for p in _panels(runtime) if access.may_read(viewer, p["topic"])]
    if access.enabled and not panels and not viewer.authenticated:
        return _page(
            request, [], "This dashboard is private: open it with your viewer link (/?token=...).", 401
        )
    return _page(request, panels, None, viewer=viewer)


def _sign_in(request: Request, token: str) -> Response:
    claims = request.app.state.runtime.access.decode(token)  # 401 when not valid
    rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
    response = RedirectResponse(request.url.path + (f"?{urlencode(rest)}" if rest else ""), status_code=303)
    response.set_cookie(
        VIEWER_COOKIE,
        token,
        max_age=max(1, int(claims["exp"] - time.time())),
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


def _panels(runtime) -> list[dict]:
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
    return panels


def _page(
    request: Request, panels: list[dict], notice: str | None, status: int = 200, viewer: Viewer | None = None
) -> Response:
    access = request.app.state.runtime.access
    session = request.cookies.get(SESSION_COOKIE)
    fresh = access.api_tokens and panels and not session
    if fresh:
        session = new_session()
    context = {
        "panels": panels,
        "topics": list(dict.fromkeys(panel["topic"] for panel in panels)),
        "views": sorted({panel["view"] for panel in panels}),  # each view's script is loaded once
        "notice": notice,
        "viewer": viewer.name if viewer is not None else None,
        # With api tokens, the page's prompts carry this proof, bound to its session cookie.
        "prompt_proof": access.prompt_proof(session) if access.api_tokens and session and panels else "",
    }
    response = templates.TemplateResponse(
        request, "index.html", context, status_code=status, headers=SECURITY_HEADERS
    )
    if fresh:
        secure = request.url.scheme == "https"
        response.set_cookie(
            SESSION_COOKIE, session, path="/", secure=secure, httponly=True, samesite="strict"
        )
    return response
