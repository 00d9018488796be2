"""Providers: where a model's requests go, with which key, and how secrets are kept out of output."""

from __future__ import annotations

import re

import httpx

from dashboard.config import AIProvider
from dashboard.events import valid_text
from dashboard.relay import dialects, routing
from dashboard.relay.capacity import Capacity
from dashboard.relay.transport import RelayTransport, origin_of, request_head

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
        """`text` from a provider (an error message) with secrets removed, as valid text."""
        text = valid_text(text)
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
        self.dialect = dialects.get("openai" if self.simulated else config.type)
        self.timeouts = config.timeouts
        self.retries = config.retries
        self.capacity = Capacity(config)  # its limits, queue and cool-down in this process
        key = config.api_key.get_secret_value() if config.api_key else ""
        self.headers = {"content-type": "application/json", "accept": "text/event-stream, application/json"}
        if key:
            self.headers.update(self.dialect.auth_headers(key))
        self.headers.update(config.headers)
        self.redactor = Redactor([key, *config.headers.values()])
        t = self.timeouts
        # Only connecting is timed by the transport; the rest by the relay itself (first token,
        # idle, total), so it can say which expired.
        self._timeouts = {"connect": t.connect}
        base = "http://simulated.invalid/v1" if self.simulated else (config.base_url or "").rstrip("/")
        self.chat_url = httpx.URL(base + self.dialect.path)
        self.models_url = httpx.URL(base + "/models")
        self.transport = self._make_transport()
        self._origin = origin_of(self.chat_url)
        self._post_head = request_head("POST", self.chat_url, self.headers)

    def serves(self, model: str) -> bool:
        return routing.serves(self.config, model)

    def listed_models(self) -> list[str]:
        """The model names written out in full (patterns without wildcards)."""
        return [m for m in self.config.models if not any(c in m for c in "*?[")]

    def _make_transport(self) -> httpx.AsyncBaseTransport:
        if self.simulated:
            from dashboard.relay.simulated import SimulatedTransport

            return SimulatedTransport(self.config.simulation)
        return RelayTransport()

    def request(self, method: str, url: httpx.URL, content: bytes = b"") -> httpx.Request:
        return httpx.Request(
            method, url, headers=self.headers, content=content, extensions={"timeout": self._timeouts}
        )

    async def post(self, payload: bytes) -> httpx.Response:
        """`payload` POSTed to the completion endpoint; the response once its head is in. Over the
        relay's own transport, the request is written from bytes prepared once per provider."""
        transport = self.transport
        if isinstance(transport, RelayTransport):
            message = self._post_head + b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
            return await transport.exchange(self._origin, message, self.timeouts.connect)
        return await self.send(self.request("POST", self.chat_url, payload))

    async def send(self, request: httpx.Request) -> httpx.Response:
        """Straight to the transport: the relay needs no cookies, redirects or auth flows, and this
        is the hot path (httpx's client layers cost more than the rest of the relay together)."""
        response = await self.transport.handle_async_request(request)
        response.request = request
        return response

    def price(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        prices = self.config.prices
        if prices is None:
            return None
        return (prompt_tokens * prices.input + completion_tokens * prices.output) / 1_000_000

    async def aclose(self) -> None:
        await self.transport.aclose()
