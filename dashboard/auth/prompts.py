"""The page's proof for prompts: the server gives each page a proof bound to its session cookie, and
a prompt that carries both may be sent without an api token (the `ai` feed's `page_prompts`). A
header alone, or a proof from another browser, is not enough."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import jwt
from starlette.requests import HTTPConnection

SESSION_COOKIE = "dashboard_session"  # a random id the page's prompt proof is bound to
PROMPT_HEADER = "X-Dashboard-Prompt"  # where the page sends that proof
PROMPT_PROOF_TTL = 24 * 3600  # seconds a page may prompt before it must be reloaded


def new_session() -> str:
    return secrets.token_urlsafe(24)


def _digest(session: str) -> str:
    return hashlib.sha256(session.encode()).hexdigest()


class PromptProofs:
    """Issues and checks the proofs, signed with a key every instance derives from the same secrets
    (the api tokens and the viewers' secret), so that any instance accepts another's."""

    def __init__(self, api_tokens: list[str], viewers_secret: str | None) -> None:
        material = "\0".join(sorted(api_tokens)).encode()
        if viewers_secret is not None:
            material += b"\0" + viewers_secret.encode()
        self._key = hashlib.sha256(b"sse-dashboard page prompts\0" + material).digest()

    def issue(self, session: str) -> str:
        """What the page sends with its prompts: bound to its session cookie, valid for a day."""
        claims = {"sid": _digest(session), "exp": int(time.time()) + PROMPT_PROOF_TTL}
        return jwt.encode(claims, self._key, algorithm="HS256")

    def carried(self, request: HTTPConnection) -> bool:
        """Whether the request carries a proof this server issued, with that page's session cookie."""
        proof = request.headers.get(PROMPT_HEADER)
        session = request.cookies.get(SESSION_COOKIE)
        if not proof or not session:
            return False
        try:
            claims = jwt.decode(proof, self._key, algorithms=["HS256"], options={"require": ["exp"]})
        except jwt.InvalidTokenError:
            return False
        return hmac.compare_digest(str(claims.get("sid", "")), _digest(session))
