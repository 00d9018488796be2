"""Viewers: who a request comes from as far as topics are concerned, and the signed viewer tokens
(JWT: HS256 with `auth.viewers.secret`, or RS256/ES256 checked with its `public_key`) that say so."""

from __future__ import annotations

import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import jwt
from starlette.requests import HTTPConnection

from dashboard.auth.credentials import bearer_token, unauthorized

if TYPE_CHECKING:
    from dashboard.config import ViewersConfig

VIEWER_COOKIE = "dashboard_viewer"  # the viewer token, set by GET /?token=
LEEWAY = 10  # seconds of clock skew allowed on a token's exp
SIGNING_ALGORITHMS = ("HS256",)
PUBLIC_KEY_ALGORITHMS = ("RS256", "ES256")


@dataclass(frozen=True)
class Viewer:
    """Who a request comes from, as far as topics are concerned."""

    name: str | None  # the token's `sub` or the proxy's user; None when anonymous
    patterns: tuple[str, ...]  # topic patterns this viewer may read besides public topics
    authenticated: bool

    def matches(self, topic: str) -> bool:
        return any(fnmatchcase(topic, pattern) for pattern in self.patterns)


EVERYONE = Viewer(None, ("*",), False)  # access control is off: every topic is readable
ANONYMOUS = Viewer(None, (), False)


def viewer_token(request: HTTPConnection) -> str | None:
    """A viewer token from `Authorization: Bearer`, `?token=` or the cookie, in that order."""
    return bearer_token(request) or request.query_params.get("token") or request.cookies.get(VIEWER_COOKIE)


class ViewerTokens:
    """Checks viewer tokens against `auth.viewers`, and mints them with its secret."""

    def __init__(self, viewers: ViewersConfig) -> None:
        self.viewers = viewers

    def decode(self, token: str) -> dict[str, Any]:
        """The claims of a viewer token; HTTPError 401 when it is malformed, forged or expired."""
        if self.viewers.secret is not None:
            key: Any = self.viewers.secret.get_secret_value()
            algorithms = list(SIGNING_ALGORITHMS)
        elif self.viewers.public_key is not None:
            key, algorithms = self.viewers.public_key, list(PUBLIC_KEY_ALGORITHMS)
        else:
            raise unauthorized("viewer tokens are not accepted here: this server trusts its auth proxy")
        try:
            claims = jwt.decode(
                token, key, algorithms=algorithms, options={"require": ["exp"]}, leeway=LEEWAY
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("the viewer token has expired", "token_expired") from None
        except jwt.InvalidTokenError as exc:
            raise unauthorized(f"invalid viewer token: {exc}", "invalid_token") from None
        topics = claims.get("topics", [])
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            raise unauthorized("invalid viewer token: `topics` must be a list of patterns", "invalid_token")
        return claims

    def mint(self, topics: list[str], ttl: int, subject: str | None = None) -> str:
        """A viewer token for `topics` patterns, valid for `ttl` seconds (`dashboard token`)."""
        if self.viewers.secret is None:
            raise ValueError(
                "minting needs auth.viewers.secret in the config (with public_key, sign tokens with "
                "your private key where it is kept)"
            )
        now = int(time.time())
        claims: dict[str, Any] = {"topics": topics, "iat": now, "exp": now + ttl}
        if subject:
            claims["sub"] = subject
        return jwt.encode(claims, self.viewers.secret.get_secret_value(), algorithm="HS256")

    def viewer(self, token: str) -> Viewer:
        """The viewer a valid token names; 401 otherwise."""
        claims = self.decode(token)
        subject = claims.get("sub")
        return Viewer(subject if isinstance(subject, str) else None, tuple(claims.get("topics", ())), True)
