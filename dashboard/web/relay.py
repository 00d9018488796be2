"""The relay's routes: POST /v1/chat/completions (OpenAI), POST /v1/messages (Anthropic) and
POST /v1/responses (OpenAI's Responses API), each streamed or not and served by providers of either
dialect, and GET /v1/models. Each completion runs through the relay's one lifecycle
(dashboard.relay.lifecycle); this module speaks HTTP."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from dashboard.auth import Access
from dashboard.errors import HTTPError
from dashboard.relay import dialects
from dashboard.relay.dialects import Dialect, Renderer
from dashboard.relay.dialects.openai import dumps
from dashboard.relay.errors import RelayError
from dashboard.relay.keys import Account
from dashboard.relay.lifecycle import Completion, Completions
from dashboard.relay.metrics import Measure
from dashboard.relay.responses import Responses
from dashboard.relay.upstream import list_models, malformed
from dashboard.tasks import Turns
from dashboard.web.cors import cross_site
from dashboard.web.direct import direct_writer, http_chunk, watch_hangup
from dashboard.web.errors import media_type, read_json
from dashboard.web.sse import SSE_HEADERS

log = logging.getLogger("dashboard.relay")

OPENAI = dialects.get("openai")
ANTHROPIC = dialects.get("anthropic")
_FLAGS = {"true": True, "1": True, "false": False, "0": False}
# Requests that begin their work in one turn of the event loop; the rest of a burst waits for the
# next turns, while the streams under way are served in between (see Turns).
STARTS_PER_TURN = 16


def sdk_error(client: Dialect, error: HTTPError | RelayError) -> JSONResponse:
    """An error in the shape the client's SDK reads (not the dashboard's own JSON errors)."""
    type_ = error.type if isinstance(error, RelayError) else None
    body = client.error_body(error.status, error.message, error.code, type_)
    return JSONResponse(body, status_code=error.status, headers=error.headers or None)


class RelayRoutes:
    """The /v1 endpoints, bound to the server's access rules and completions."""

    def __init__(self, access: Access, completions: Completions, max_body: int) -> None:
        self.access = access
        self.completions = completions
        self.max_body = max_body
        self.turns = Turns(STARTS_PER_TURN)

    def _account(self, request: Request) -> Account:
        """Pages of other sites can neither read nor spend (403); a POST must say it is JSON (415), so
        no form or text/plain "simple" request gets through without a preflight; then the api token,
        as a Bearer token or (as the Anthropic SDK sends it) in x-api-key. The account the request is
        charged to: the named key whose token it is, else one with no limits."""
        if cross_site(request):
            raise HTTPError(
                403, "the AI relay does not answer requests from another site's page", "cross_origin"
            )
        if request.method == "POST":
            media = media_type(request)
            if media != "application/json":  # stricter than require_json_type: none at all is refused too
                raise HTTPError(415, f"send the body as application/json, not {media or 'no content type'}")
        token = None
        if self.access.api_tokens:
            token = self.access.require_api_token(request, "the AI relay (/v1)")
        return self.completions.charged_to(token)

    async def models(self, request: Request) -> Response:
        """GET /v1/models"""
        try:
            self._account(request)
        except HTTPError as exc:
            return sdk_error(OPENAI, exc)
        data = await list_models(self.completions.relay)
        return JSONResponse({"object": "list", "data": data})

    async def chat_completions(self, request: Request) -> Any:
        """POST /v1/chat/completions: relayed to the first provider that serves the model."""
        return await self._relay(request, OPENAI)

    async def messages(self, request: Request) -> Any:
        """POST /v1/messages: the Anthropic Messages API, relayed the same way."""
        return await self._relay(request, ANTHROPIC)

    async def responses(self, request: Request) -> Any:
        """POST /v1/responses: the Responses API, its requests translated to chat completions."""
        return await self._relay(request, OPENAI, responses=True)

    async def _relay(self, request: Request, asks: Dialect, *, responses: bool = False) -> Any:
        """`asks`: the dialect of the request the relay is given; `responses`: the client speaks
        the Responses API, and its request is first translated to chat completions (`asks`)."""
        measure = Measure(model="")  # from now: the time to first token counts reading the request
        client = asks
        await self.turns.wait()
        try:
            account = self._account(request)
            body = await read_json(request, self.max_body)
            if responses:
                if not isinstance(body, dict):
                    raise HTTPError(400, "the body must be a JSON object", "invalid_request")
                client = Responses(body)
                try:
                    body = client.to_common(body)
                except (AttributeError, KeyError, TypeError, ValueError):
                    raise malformed("chat completions") from None
            _validate(body, asks)
            _stream_flag(request, body)
            measure.model = body["model"]
            completion = await self.completions.admit(account, body, measure, asks)
        except (HTTPError, RelayError) as exc:
            return sdk_error(client, exc)
        kind = RelayedStream if body.get("stream") else RelayedCompletion
        return kind(completion, client, asks)


def _stream_flag(request: Request, body: dict[str, Any]) -> None:
    """`?stream=true` counts as `"stream": true` when the body does not say."""
    if "stream" in body or not request.scope.get("query_string"):
        return
    raw = request.query_params.get("stream")
    if raw is None:
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
    """An ASGI response that relays one admitted completion and stops the upstream when the
    client leaves; the completion's lifecycle settles, measures and logs it however it ends."""

    def __init__(self, completion: Completion, client: Dialect, asks: Dialect | None = None) -> None:
        self.completion = completion
        self.client = client  # how the answer is written
        self.asks = asks or client  # the dialect of the completion's request (Responses': chat completions)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
            watcher = watch_hangup(scope, receive, leave)
            async with self.completion:
                await self.run(scope, send)
        except asyncio.CancelledError:
            if not left:
                raise
            task.uncancel()
        finally:
            running = False
            if watcher is not None:
                watcher.cancel()

    async def run(self, scope: Scope, send: Send) -> None:
        raise NotImplementedError

    async def _fail(self, send: Send, error: RelayError) -> None:
        self.completion.failed(error)
        await _send_response(send, sdk_error(self.client, error))


class RelayedStream(_Relayed):
    async def run(self, scope: Scope, send: Send) -> None:
        completion, client = self.completion, self.client
        try:
            upstream = await completion.open_stream(self.asks, text=client is not self.asks)
        except RelayError as exc:
            await self._fail(send, exc)
            return
        renderer: Renderer = client.renderer(
            upstream.provider.dialect, usage=client.wants_usage(completion.body)
        )
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            # Chunks go straight to the client's socket, as the SSE fan-out's do, past the
            # middleware's `send` wrappers (through them only while the socket is paused).
            write = direct_writer(scope, body_read=True)
            if write is not None:
                upstream.forward(write.chunk)  # plain events of the client's own dialect, as they are
            async for batch in upstream.batches():
                out = renderer.frames(batch)
                if out:
                    if write is None or not write(http_chunk(out)):
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                    upstream.handed_on(batch)
            tail = renderer.end()
        except RelayError as exc:
            # Text may have been relayed already: never retry; end with an error, never like an answer.
            completion.failed(exc)
            log.warning("relay stream from %r failed: %s", upstream.provider.name, exc.message)
            tail = renderer.error(exc)
        finally:
            await completion.close_stream()
        await send({"type": "http.response.body", "body": tail, "more_body": False})


class RelayedCompletion(_Relayed):
    async def run(self, scope: Scope, send: Send) -> None:
        try:
            data, answer, dialect = await self.completion.complete(self.asks)
        except RelayError as exc:
            await self._fail(send, exc)
            return
        if dialect is not self.client:
            data = dumps(self.client.completion_body(answer)).encode()
        await _send_response(send, Response(data, media_type="application/json"))


async def _send_response(send: Send, response: Response) -> None:
    async def no_receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    await response({"type": "http"}, no_receive, send)
