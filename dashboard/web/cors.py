"""Other sites' pages: CORS headers on the read routes for the origins in `server.cors_origins`,
and `cross_site`, which tells the routes that spend or change something to refuse them."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send


def cross_site(request: HTTPConnection) -> bool:
    """Whether a browser says the request comes from another site's page. Only ever used to refuse:
    these headers prove nothing when present, but a browser always sends them on such requests."""
    site = request.headers.get("sec-fetch-site")
    if site in ("cross-site", "same-site"):
        return True
    origin = request.headers.get("origin")
    if origin is None:
        return False
    parts = urlsplit(origin)
    return (
        origin == "null"
        or parts.scheme not in ("http", "https")
        or parts.netloc != request.headers.get("host")
    )


class ReadsCORS:
    """CORS for the read routes only (/sse, /api), for the origins in `server.cors_origins`."""

    def __init__(self, app: ASGIApp, origins: list[str], credentials: bool) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=["GET"],
            allow_headers=["Authorization", "Last-Event-ID"],
            allow_credentials=credentials,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == "/sse" or path.startswith(("/sse/", "/api/"))):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
