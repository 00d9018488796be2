"""The relay's routes: POST /v1/chat/completions (OpenAI) and POST /v1/messages (Anthropic), each
streamed or not and served by providers of either dialect, and GET /v1/models."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from dashboard.auth.credentials import bearer_token
from dashboard.relay import dialects
from dashboard.relay.dialects import Dialect, Renderer
from dashboard.relay.dialects.openai import dumps
from dashboard.relay.errors import RelayError
from dashboard.relay.keys import NO_KEY, Account, Keys, Ticket
from dashboard.relay.metrics import Measure, now
from dashboard.relay.upstream import Relay, UpstreamStream, list_models
from dashboard.security import token_in
from dashboard.web.cors import cross_site
from dashboard.web.direct import direct_writer, http_chunk, on_hangup
from dashboard.web.errors import HTTPError, media_type, read_json
from dashboard.web.sse import SSE_HEADERS

log = logging.getLogger("dashboard.relay")

OPENAI = dialects.get("openai")
ANTHROPIC = dialects.get("anthropic")
_FLAGS = {"true": True, "1": True, "false": False, "0": False}


def error_response(
    client: Dialect, status: int, message: str, code: str, type_: str | None = None, headers=None
) -> JSONResponse:
    """An error in the shape the client's SDK reads."""
    return JSONResponse(client.error_body(status, message, code, type_), status_code=status, headers=headers)


def _relay_error_response(client: Dialect, error: RelayError) -> JSONResponse:
    return error_response(client, error.status, error.message, error.code, error.type, error.headers or None)


def _check_access(request: Request) -> Account:
    """Pages of other sites can neither read nor spend (403); a POST must say it is JSON (415), so no
    form or text/plain "simple" request gets through without a preflight; then the api token, as a
    Bearer token or (as the Anthropic SDK sends it) in x-api-key. The account the request is
    charged to: the named key whose token it is, else one with no limits."""
    if cross_site(request):
        raise HTTPError(403, "the AI relay does not answer requests from another site's page", "cross_origin")
    if request.method == "POST":
        media = media_type(request)
        if media != "application/json":  # stricter than require_json_type: none at all is refused too
            raise HTTPError(415, f"send the body as application/json, not {media or 'no content type'}")
    runtime = request.app.state.runtime
    tokens = runtime.access.api_tokens
    if not tokens:
        return Account(NO_KEY)
    token = bearer_token(request) or request.headers.get("x-api-key")
    challenge = {"WWW-Authenticate": "Bearer"}
    if not token:
        what = "the AI relay (/v1) requires 'Authorization: Bearer <token>' or 'x-api-key: <token>'"
        raise HTTPError(401, what, headers=challenge)
    if not token_in(token, tokens):
        raise HTTPError(401, "invalid token", headers=challenge)
    return runtime.keys.by_token(token) or Account(NO_KEY)


async def models(request: Request) -> Response:
    """GET /v1/models"""
    try:
        _check_access(request)
    except HTTPError as exc:
        return error_response(OPENAI, exc.status, exc.message, exc.code, headers=exc.headers)
    data = await list_models(request.app.state.runtime.relay)
    return JSONResponse({"object": "list", "data": data})


async def chat_completions(request: Request) -> Any:
    """POST /v1/chat/completions: relayed to the first provider that serves the model."""
    return await _relay(request, OPENAI)


async def messages(request: Request) -> Any:
    """POST /v1/messages: the Anthropic Messages API, relayed the same way."""
    return await _relay(request, ANTHROPIC)


async def _relay(request: Request, client: Dialect) -> Any:
    measure = Measure(model="")
    runtime = request.app.state.runtime
    try:
        account = _check_access(request)
        body = await read_json(request, runtime.config.server.max_body)
        _validate(body, client)
        _stream_flag(request, body)
    except HTTPError as exc:
        return error_response(client, exc.status, exc.message, exc.code, headers=exc.headers)
    relay: Relay = runtime.relay
    measure.model = body["model"]
    try:
        providers = relay.route(body["model"])
    except RelayError as exc:
        return _relay_error_response(client, exc)
    measure.label = relay.model_label(providers[0], body["model"])
    try:
        ticket = await runtime.keys.admit(account, body)
    except HTTPError as exc:
        return error_response(client, exc.status, exc.message, exc.code, headers=exc.headers)
    kind = RelayedStream if body.get("stream") else RelayedCompletion
    return kind(relay, body, measure, client, runtime.keys, ticket)


def _stream_flag(request: Request, body: dict[str, Any]) -> None:
    """`?stream=true` counts as `"stream": true` when the body does not say."""
    raw = request.query_params.get("stream")
    if raw is None or "stream" in body:
        return
    if raw.lower() not in _FLAGS:
        raise HTTPError(400, f"?stream= must be true or false, got {raw!r}", "invalid_request")
    body["stream"] = _FLAGS[raw.lower()]


def _validate(body: Any, client: Dialect) -> None:
    if not isinstance(body, dict):
        raise HTTPError(400, "the body must be a JSON object", "invalid_request")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise HTTPError(400, "'model' is required and must be a string", "invalid_request")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise HTTPError(400, "'messages' is required and must be a non-empty list", "invalid_request")
    if not all(isinstance(m, dict) for m in body["messages"]):
        raise HTTPError(400, "each of 'messages' must be an object", "invalid_request")
    for message in body["messages"]:
        content = message.get("content")
        if isinstance(content, list):
            if not all(isinstance(part, dict) and isinstance(part.get("text", ""), str) for part in content):
                problem = "each part of a message's content must be an object, its text a string"
                raise HTTPError(400, problem, "invalid_request")
        elif content is not None and not isinstance(content, str):
            raise HTTPError(400, "a message's content must be a string or a list of parts", "invalid_request")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise HTTPError(400, "'stream' must be true or false", "invalid_request")
    if "stream_options" in body and not isinstance(body["stream_options"], dict):
        raise HTTPError(400, "'stream_options' must be an object", "invalid_request")
    limit = body.get("max_tokens")
    if client is ANTHROPIC and (type(limit) is not int or limit < 1):
        raise HTTPError(400, "'max_tokens' is required and must be a positive integer", "invalid_request")


class _Relayed:
    """An ASGI response that relays one completion and stops the upstream when the client leaves."""

    def __init__(
        self,
        relay: Relay,
        body: dict[str, Any],
        measure: Measure,
        client: Dialect,
        keys: Keys,
        ticket: Ticket,
    ) -> None:
        self.relay = relay
        self.body = body
        self.measure = measure
        self.client = client
        self.keys = keys
        self.ticket = ticket
        self.text_chars = 0  # relayed, for the usage estimate when the provider reports none

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        task = asyncio.current_task()
        assert task is not None
        running, left = True, False

        def leave() -> None:  # the client left: stop the upstream request where it is
            nonlocal left
            if running:
                left = True
                task.cancel()

        watcher = None
        try:
            watcher = None if on_hangup(scope, leave) else asyncio.create_task(_on_disconnect(receive, leave))
            await self.run(send)
        except asyncio.CancelledError:
            if not left:
                raise
            task.uncancel()
            self.measure.outcome = "cancelled"
        except Exception:
            self.measure.outcome = "error"
            raise
        finally:
            running = False
            if watcher is not None:
                watcher.cancel()
            try:
                self.finish()
            finally:  # whatever failed above, the reservation is settled
                await self.keys.settle(self.ticket, self.measure, self.text_chars)

    async def run(self, send: Send) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        measure = self.measure
        measure.record()
        summary = measure.summary(self._price())
        log.info(
            "relay %s model=%s provider=%s attempts=%d ttft_ms=%s overhead_ms=%s tokens=%s duration_ms=%s",
            measure.outcome,
            measure.model,
            measure.provider or "-",
            measure.attempts,
            summary["ttft_ms"],
            summary["relay_overhead_ms"],
            (measure.usage or {}).get("completion_tokens", measure.text_chunks),
            summary["duration_ms"],
        )

    def _price(self):
        provider = next((p for p in self.relay.providers if p.name == self.measure.provider), None)
        return provider.price if provider is not None else None

    async def _fail(self, send: Send, error: RelayError) -> None:
        self.measure.outcome = "timeout" if error.status == 504 else "error"
        await _send_response(send, _relay_error_response(self.client, error))


class RelayedStream(_Relayed):
    async def run(self, send: Send) -> None:
        measure = self.measure
        try:
            upstream: UpstreamStream = await self.relay.open_stream(
                self.body, measure, self.client, text=False
            )
        except RelayError as exc:
            await self._fail(send, exc)
            return
        renderer: Renderer = self.client.renderer(
            upstream.provider.dialect, usage=self.client.wants_usage(self.body)
        )
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            # Chunks go straight to the client's socket, as the SSE fan-out's do, past the
            # middleware's `send` wrappers (through them only while the socket is paused).
            write = direct_writer(self.scope, body_read=True)
            async for batch in upstream.batches():
                self.text_chars += sum(len(chunk.text) for chunk in batch)
                out = renderer.frames(batch)
                if out:
                    if write is None or not write(http_chunk(out)):
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                    upstream.handed_on(batch)
            tail = renderer.end()
        except RelayError as exc:
            # Text may have been relayed already: never retry; end with an error, never like an answer.
            measure.outcome = "timeout" if exc.status == 504 else "error"
            log.warning("relay stream from %r failed: %s", upstream.provider.name, exc.message)
            tail = renderer.error(exc)
        finally:
            measure.ended = measure.ended or now()
            await upstream.aclose()
        await send({"type": "http.response.body", "body": tail, "more_body": False})


class RelayedCompletion(_Relayed):
    async def run(self, send: Send) -> None:
        try:
            data, completion, dialect = await self.relay.complete(self.body, self.measure, self.client)
        except RelayError as exc:
            await self._fail(send, exc)
            return
        self.measure.first_event_out = self.measure.ended = now()
        self.text_chars = len(completion.text)
        if dialect is not self.client:
            data = dumps(self.client.completion_body(completion)).encode()
        await _send_response(send, Response(data, media_type="application/json"))


async def _send_response(send: Send, response: Response) -> None:
    async def no_receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    await response({"type": "http"}, no_receive, send)


async def _on_disconnect(receive: Receive, callback: Callable[[], None]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    callback()
