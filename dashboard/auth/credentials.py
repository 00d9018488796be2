"""Where a request carries a credential (`Authorization: Bearer`), and the 401 that asks for one."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from dashboard.errors import HTTPError
from dashboard.security import token_in

CHALLENGE = {"WWW-Authenticate": "Bearer"}


def bearer_token(request: HTTPConnection) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def unauthorized(message: str, code: str = "unauthorized") -> HTTPError:
    return HTTPError(401, message, code, headers=CHALLENGE)


def require_bearer(request: HTTPConnection, tokens: list[str], what: str) -> None:
    """401 unless the request carries one of `tokens` as a Bearer token (compared in constant time)."""
    token = bearer_token(request)
    if token is None:
        raise unauthorized(f"{what} requires 'Authorization: Bearer <token>'")
    if not token_in(token, tokens):
        raise unauthorized("invalid token")
