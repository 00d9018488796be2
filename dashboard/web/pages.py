"""The dashboard page, rendered from the Jinja2 templates in templates/."""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from dashboard.auth.prompts import SESSION_COOKIE, new_session
from dashboard.auth.viewers import VIEWER_COOKIE, Viewer
from dashboard.events import ALERT_EVENT, GAP_EVENT, STATUS_EVENT
from dashboard.views import FALLBACK, VIEWS
from dashboard.web.errors import HTTPError

if TYPE_CHECKING:
    from dashboard.alerts import Alerts
    from dashboard.auth import Access
    from dashboard.config import Config, DashboardConfig
    from dashboard.supervisor import Supervisor


def _templates_dir() -> Path:
    """templates/ beside the package (a checkout), else where a regular install put it."""
    checkout = Path(__file__).resolve().parent.parent.parent / "templates"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "sse-dashboard" / "templates"


TEMPLATES_DIR = _templates_dir()
templates = Jinja2Templates(directory=TEMPLATES_DIR)

# Scripts and styles come only from the app itself: feed text can never run as code.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors {ancestors}"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP.format(ancestors="'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _shown_state(state: str) -> str:
    """A feed's state as its panel first shows it; events and status events update it live."""
    return {"idle": "ready", "starting": "waiting", "standby": "running"}.get(state, state)


@dataclass(frozen=True)
class Pages:
    """The pages, bound to what they show: the boards, the feeds' states, the alert rules, and the
    access rules that decide who sees which panel."""

    access: Access
    config: Config
    boards: dict[str, DashboardConfig]
    supervisor: Supervisor
    alerts: Alerts

    async def index(self, request: Request) -> Response:
        """GET /: the first board (the only one without `dashboards:`)."""
        return self._board(request, next(iter(self.boards)))

    async def board(self, request: Request) -> Response:
        """GET /d/{name}: one board, with the panels its viewer may read."""
        return self._board(request, request.path_params["name"])

    async def embed(self, request: Request) -> Response:
        """GET /embed/{dashboard}/{n}: one panel alone (n: its position from 1, or its `id:`), in a
        minimal frame that the origins in `server.frame_ancestors` may put in theirs."""
        access = self.access
        name, ref = request.path_params["dashboard"], request.path_params["n"]
        viewer = access.viewer(request)  # 401 for a token that is not valid
        panels = self._panels(name) if name in self.boards else []
        found = [p for number, p in enumerate(panels, 1) if ref in (str(number), p["ref"])]
        if not (found and access.may_read(viewer, found[0]["topic"])):
            # Unknown and forbidden panels look alike to whoever may not read every topic.
            if found or not self._sees_everything(viewer):
                raise _not_shown(viewer)
            raise HTTPError(404, f"dashboard {name!r} has no panel {ref!r}", "unknown_panel")
        ancestors = " ".join(self.config.server.frame_ancestors) or "'none'"
        headers = {**SECURITY_HEADERS, "Content-Security-Policy": CSP.format(ancestors=ancestors)}
        return self._page(request, found, None, viewer=viewer, embed=True, headers=headers)

    def _sees_everything(self, viewer: Viewer) -> bool:
        """Whether `viewer` may read every topic: nothing is hidden from it, so a name that does not
        exist may be answered 404 (to anyone else it answers like one it may not see)."""
        return all(self.access.may_read(viewer, topic) for topic in self.config.topics)

    def _board(self, request: Request, name: str) -> Response:
        """A board's page. With viewers configured, `?token=...` checks the token, keeps it in an
        HttpOnly cookie and redirects to the page without it, so the token leaves the address bar."""
        access = self.access
        token = request.query_params.get("token")
        if access.enabled and token is not None:
            return self._sign_in(request, token)
        try:
            viewer = access.viewer(request)
        except HTTPError as exc:  # an expired or forged cookie: say so, and forget it
            response = self._page(request, [], exc.message, status=401)
            response.delete_cookie(
                VIEWER_COOKIE, path="/", secure=access.over_tls(request), httponly=True, samesite="strict"
            )
            return response
        if name not in self.boards and (not access.enabled or self._sees_everything(viewer)):
            raise HTTPError(404, f"no dashboard named {name!r}", "unknown_dashboard")
        # A board that does not exist answers like one whose panels this viewer may not read.
        shown = self._panels(name) if name in self.boards else []
        panels = [p for p in shown if access.may_read(viewer, p["topic"])]
        if access.enabled and not panels:
            if not viewer.authenticated:
                notice = "This dashboard is private: open it with your viewer link (/?token=...)."
                return self._page(request, [], notice, 401)
            notice = "Your viewer link does not open any panel of this dashboard."
            return self._page(request, [], notice, 403, viewer)
        return self._page(request, panels, None, viewer=viewer, board=name)

    def _sign_in(self, request: Request, token: str) -> Response:
        claims = self.access.decode(token)  # 401 when not valid
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        response = RedirectResponse(
            request.url.path + (f"?{urlencode(rest)}" if rest else ""), status_code=303
        )
        response.set_cookie(
            VIEWER_COOKIE,
            token,
            max_age=max(1, int(claims["exp"] - time.time())),
            path="/",
            secure=self.access.over_tls(request),
            httponly=True,
            samesite="strict",
        )
        return response

    def _panels(self, board: str) -> list[dict]:
        config = self.config
        notified = {rule.notify for rule in config.alerts}
        panels = []
        for number, panel in enumerate(self.boards[board].panels, 1):
            feed_class = config.topics[panel.topic].feed_class
            alerts = [ALERT_EVENT] if panel.topic in notified else []
            # Only what the page needs: never the topic's feed options (they may hold secrets).
            panels.append(
                {
                    "id": f"panel-{number}",
                    "ref": panel.id or "",
                    "topic": panel.topic,
                    "title": panel.title,
                    "view": panel.view if panel.view in VIEWS else FALLBACK,
                    "size": panel.size,
                    "events": [STATUS_EVENT, GAP_EVENT, *feed_class.event_types, *alerts],
                    "state": _shown_state(self.supervisor.runners[panel.topic].state),
                    "options": panel.options,
                }
            )
        return panels

    def _siblings(self, viewer: Viewer | None) -> list[dict]:
        """The boards this viewer may see something of, for the header's navigation."""
        return [
            {"name": name, "title": board.title or name}
            for name, board in self.boards.items()
            if viewer is not None and any(self.access.may_read(viewer, p.topic) for p in board.panels)
        ]

    def _page(
        self,
        request: Request,
        panels: list[dict],
        notice: str | None,
        status: int = 200,
        viewer: Viewer | None = None,
        *,
        board: str | None = None,
        embed: bool = False,
        headers: dict[str, str] = SECURITY_HEADERS,
    ) -> Response:
        access = self.access
        session = request.cookies.get(SESSION_COOKIE)
        fresh = access.api_tokens and panels and not session
        if fresh:
            session = new_session()
        if viewer is not None and any(p["view"] == "alerts" for p in panels):
            readable = [r for r in self.alerts.rules.values() if access.may_read(viewer, r.config.topic)]
            rules = [r.as_json() for r in readable]
            for panel in panels:
                if panel["view"] == "alerts":  # states only: nothing of the webhooks
                    panel["rules"] = [rule for rule in rules if rule["notify"] == panel["topic"]]
        boards = self.boards
        context = {
            "panels": panels,
            # Links are relative, so that the app works behind a proxy under any path.
            "root": "../" * request.url.path.count("/", 1),
            "board": board,
            "title": (boards[board].title or board) if board and self.config.dashboards else "sse-dashboard",
            "siblings": self._siblings(viewer) if board and len(boards) > 1 else [],
            "embed": embed,
            "topics": list(dict.fromkeys(panel["topic"] for panel in panels)),
            "views": sorted({panel["view"] for panel in panels}),  # each view's script is loaded once
            "notice": notice,
            "viewer": viewer.name if viewer is not None else None,
            # With api tokens, the page's prompts carry this proof, bound to its session cookie.
            "prompt_proof": access.prompt_proof(session) if access.api_tokens and session and panels else "",
        }
        response = templates.TemplateResponse(
            request, "index.html", context, status_code=status, headers=headers
        )
        if fresh:
            secure = access.over_tls(request)
            response.set_cookie(
                SESSION_COOKIE, session, path="/", secure=secure, httponly=True, samesite="strict"
            )
        return response


def _not_shown(viewer: Viewer) -> HTTPError:
    """The refusal of a panel `viewer` may not see, the same whether it exists or not."""
    if not viewer.authenticated:
        return HTTPError(
            401,
            "this panel needs a viewer token (Authorization: Bearer, ?token=, or open the dashboard "
            "with /?token=...)",
            "unauthorized",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return HTTPError(403, "this viewer may not see this panel", "forbidden_panel")


class ViewScripts:
    """GET /views/{name}.js: the script of a view, built in or from a package (dashboard.views),
    read once at start; the browser keeps it until it changes (ETag)."""

    def __init__(self, scripts: dict[str, bytes]) -> None:
        self.scripts = {
            name: (body, f'"{hashlib.sha256(body).hexdigest()[:20]}"') for name, body in scripts.items()
        }

    async def script(self, request: Request) -> Response:
        found = self.scripts.get(request.path_params["name"])
        if found is None:
            raise HTTPError(404, "no such view", "not_found")
        body, etag = found
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="text/javascript", headers=headers)
