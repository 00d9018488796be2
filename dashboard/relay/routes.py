"""The OpenAI-compatible routes: POST /v1/chat/completions (streamed or not) and GET /v1/models."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from dashboard.relay.errors import RelayError
from dashboard.relay.metrics import Measure, now
from dashboard.relay.upstream import Relay, UpstreamStream, list_models
from dashboard.web.access import cross_site
from dashboard.web.errors import HTTPError, read_json, require_bearer

log = logging.getLogger("dashboard.relay")

_OPENAI_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def openai_error(
    status: int, message: str, code: str, type_: str | None = None, headers=None
) -> JSONResponse:
    """An error as the OpenAI SDKs read it: `{"error": {"message", "type", "param", "code"}}`."""
    if type_ is None:
        type_ = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _relay_error_response(error: RelayError) -> JSONResponse:
    return openai_error(error.status, error.message, error.code, error.type, error.headers or None)


def _check_access(request: Request) -> None:
    """Pages of other sites can neither read nor spend (403); a POST must say it is JSON (415), so no
    form or text/plain "simple" request gets through without a preflight; then the api token."""
    if cross_site(request):
        raise HTTPError(403, "the AI relay does not answer requests from another site's page", "cross_origin")
    if request.method == "POST":
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "application/json":
            raise HTTPError(415, f"send the body as application/json, not {media_type or 'no content type'}")
    tokens = request.app.state.runtime.config.auth.api_tokens
    if tokens:
        require_bearer(request, tokens, "the AI relay (/v1)")


async def models(request: Request) -> Response:
    """GET /v1/models"""
    try:
        _check_access(request)
    except HTTPError as exc:
        return openai_error(exc.status, exc.message, exc.code, headers=exc.headers)
    data = await list_models(request.app.state.runtime.relay)
    return JSONResponse({"object": "list", "data": data})


async def chat_completions(request: Request) -> Any:
    """POST /v1/chat/completions: relayed to the first provider that serves the model."""
    measure = Measure(model="")
    runtime = request.app.state.runtime
    try:
        _check_access(request)
        body = await read_json(request, runtime.config.server.max_body)
        _validate(body)
    except HTTPError as exc:
        return openai_error(exc.status, exc.message, exc.code, headers=exc.headers)
    relay: Relay = runtime.relay
    measure.model = body["model"]
    try:
        providers = relay.route(body["model"])
    except RelayError as exc:
        return _relay_error_response(exc)
    measure.label = relay.model_label(providers[0], body["model"])
    if body.get("stream"):
        return RelayedStream(relay, body, measure)
    return RelayedCompletion(relay, body, measure)


def _validate(body: Any) -> None:
    if not isinstance(body, dict):
        raise HTTPError(400, "the body must be a JSON object", "invalid_request")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise HTTPError(400, "'model' is required and must be a string", "invalid_request")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise HTTPError(400, "'messages' is required and must be a non-empty list", "invalid_request")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise HTTPError(400, "'stream' must be true or false", "invalid_request")


class _Relayed:
    """An ASGI response that relays one completion and stops the upstream when the client leaves."""

    def __init__(self, relay: Relay, body: dict[str, Any], measure: Measure) -> None:
        self.relay = relay
        self.body = body
        self.measure = measure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        work = asyncio.create_task(self.run(send))
        gone = asyncio.create_task(_disconnected(receive))
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not work.done():
                self.measure.outcome = "cancelled"
                work.cancel()
            gone.cancel()
            await asyncio.gather(work, gone, return_exceptions=True)
            self.finish()
        if not work.cancelled() and work.exception() is not None:
            raise work.exception()  # type: ignore[misc]

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
        await _send_response(send, _relay_error_response(error))


class RelayedStream(_Relayed):
    async def run(self, send: Send) -> None:
        try:
            upstream: UpstreamStream = await self.relay.open_stream(self.body, self.measure)
        except RelayError as exc:
            await self._fail(send, exc)
            return
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            async for batch in upstream.batches():
                out = b"".join(b"data: " + c.data + b"\n\n" for c in batch if c.relay)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                    upstream.handed_on(batch)
            tail = b"data: [DONE]\n\n"
        except RelayError as exc:
            # Text may have been relayed already: never retry; end with an error, never like an answer.
            self.measure.outcome = "timeout" if exc.status == 504 else "error"
            log.warning("relay stream from %r failed: %s", upstream.provider.name, exc.message)
            tail = b"data: " + json.dumps(exc.as_openai()).encode() + b"\n\n"
        finally:
            self.measure.ended = self.measure.ended or now()
            await upstream.aclose()
        await send({"type": "http.response.body", "body": tail, "more_body": False})


class RelayedCompletion(_Relayed):
    async def run(self, send: Send) -> None:
        try:
            data, _ = await self.relay.complete(self.body, self.measure)
        except RelayError as exc:
            await self._fail(send, exc)
            return
        self.measure.first_event_out = self.measure.ended = now()
        response = Response(data, media_type="application/json")
        await _send_response(send, response)


async def _send_response(send: Send, response: Response) -> None:
    async def no_receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    await response({"type": "http"}, no_receive, send)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
