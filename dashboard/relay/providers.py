"""Providers: where a model's requests go, with which key, and how secrets are kept out of output."""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

import httpx

from dashboard.config import AIProvider

_TOKEN = re.compile(r"[A-Za-z0-9_\-.+/=]{8,}")
_GRAM = 8
REDACTED = "[redacted]"


class Redactor:
    """Removes secrets (keys, header values) from text: whole, and any 8+ character piece of one,
    since providers echo keys partly ("Incorrect API key provided: sk-abc...xyz")."""

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self.secret_bytes = [s.encode() for s in self.secrets]
        self._grams = {s[i : i + _GRAM] for s in self.secrets for i in range(len(s) - _GRAM + 1)}

    def text(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        if not self._grams:
            return text
        return _TOKEN.sub(self._token, text)

    def _token(self, match: re.Match[str]) -> str:
        token = match.group()
        grams = self._grams
        if any(token[i : i + _GRAM] in grams for i in range(len(token) - _GRAM + 1)):
            return REDACTED
        return token

    def data(self, data: bytes) -> bytes:
        """Passed-through bytes: whole secrets only (cheap enough for every chunk)."""
        for secret in self.secret_bytes:
            if secret in data:
                data = data.replace(secret, REDACTED.encode())
        return data


class Provider:
    """One configured provider and its HTTP client (connections are pooled per provider)."""

    def __init__(self, config: AIProvider) -> None:
        self.config = config
        self.name = config.name
        self.simulated = config.type == "simulated"
        self.timeouts = config.timeouts
        self.retries = config.retries
        key = config.api_key.get_secret_value() if config.api_key else ""
        self.headers = {"content-type": "application/json", "accept": "text/event-stream, application/json"}
        if key:
            self.headers["authorization"] = f"Bearer {key}"
        self.headers.update(config.headers)
        self.redactor = Redactor([key, *config.headers.values()])
        self._client: httpx.AsyncClient | None = None

    def serves(self, model: str) -> bool:
        return any(fnmatchcase(model, pattern) for pattern in self.config.models)

    def listed_models(self) -> list[str]:
        """The model names written out in full (patterns without wildcards)."""
        return [m for m in self.config.models if not any(c in m for c in "*?[")]

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> httpx.AsyncClient:
        t = self.timeouts
        # Read gaps are timed by the relay itself (first token, idle), so it can say which expired.
        timeout = httpx.Timeout(connect=t.connect, read=None, write=t.first_token, pool=t.connect)
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=30)
        if self.simulated:
            from dashboard.relay.simulated import SimulatedTransport

            return httpx.AsyncClient(
                transport=SimulatedTransport(self.config.simulation),
                base_url="http://simulated.invalid/v1",
                timeout=timeout,
            )
        base_url = (self.config.base_url or "").rstrip("/")
        return httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits)

    def price(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        prices = self.config.prices
        if prices is None:
            return None
        return (prompt_tokens * prices.input + completion_tokens * prices.output) / 1_000_000

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
