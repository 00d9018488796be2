"""Api tokens: what the AI relay and prompts accept (`auth.api_tokens` and the named keys' tokens),
sent as `Authorization: Bearer` or, as the Anthropic SDK sends it, `x-api-key`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection

from dashboard.auth.credentials import bearer_token, unauthorized
from dashboard.security import token_in

if TYPE_CHECKING:
    from dashboard.config import Config


def configured_api_tokens(config: Config) -> list[str]:
    """Every token the relay and prompts accept: plain api tokens and named keys'."""
    return [*config.auth.api_tokens, *(k.token.get_secret_value() for k in config.auth.api_keys)]


def api_token(request: HTTPConnection, tokens: list[str]) -> str | None:
    """The api token the request carries, when it is one of `tokens`."""
    for token in (bearer_token(request), request.headers.get("x-api-key")):
        if token_in(token, tokens):
            return token
    return None


def require_api_token(request: HTTPConnection, tokens: list[str], what: str) -> str:
    """The api token the request carries; 401 when it carries none, or one not in `tokens`."""
    token = api_token(request, tokens)
    if token is not None:
        return token
    if bearer_token(request) or request.headers.get("x-api-key"):
        raise unauthorized("invalid token")
    raise unauthorized(f"{what} requires 'Authorization: Bearer <token>' or 'x-api-key: <token>'")
