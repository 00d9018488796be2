"""The relay's core: routes a request to providers, retries and falls back until the first event,
then reads the chosen provider's stream under the idle and total timeouts.

Both `POST /v1/chat/completions` and the `ai` feed reach `Relay.open_stream` / `Relay.complete` through
the completion lifecycle (lifecycle.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from fnmatch import fnmatchcase
from typing import Any, TypeVar

import httpx

from dashboard.backoff import Backoff
from dashboard.config import AIConfig
from dashboard.events import json_text, valid_text
from dashboard.relay import dialects
from dashboard.relay.dialects import Chunk, Completion, Dialect
from dashboard.relay.errors import (
    ConnectTimeout,
    FirstTokenTimeout,
    IdleTimeout,
    NoProvider,
    RelayError,
    TotalTimeout,
    UpstreamIncomplete,
    UpstreamProtocolError,
    UpstreamStatus,
    UpstreamStreamError,
    UpstreamUnreachable,
)
from dashboard.relay.metrics import Measure, now
from dashboard.relay.providers import Provider
from dashboard.relay.sse import SSEEvent, SSEParser, SSEProtocolError
from dashboard.relay.transport import Body

log = logging.getLogger("dashboard.relay")

T = TypeVar("T")
Price = Callable[[int, int], float | None]  # prompt and completion tokens -> USD, None without prices
OPENAI = dialects.get("openai")
_DONE = "[DONE]"
_RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
_MAX_BODY = 64 << 20  # a non-streamed answer larger than this is not a chat completion


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After (or retry-after-ms) header, when there is one."""
    ms = response.headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    raw = response.headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


class Relay:
    """The configured providers, and how one request finds one that answers."""

    def __init__(self, config: AIConfig) -> None:
        self.providers = [Provider(p) for p in config.providers]
        self._models_cache: tuple[float, list[dict[str, Any]]] | None = None

    def route(self, model: str) -> list[Provider]:
        """The providers that serve `model`, in the configured order (the first is tried first)."""
        providers = [p for p in self.providers if p.serves(model)]
        if not providers:
            served = ", ".join(sorted({m for p in self.providers for m in p.config.models})) or "none"
            raise NoProvider(f"no provider serves model {model!r} (configured models: {served})")
        return providers

    def model_label(self, provider: Provider, model: str) -> str:
        """The metrics label for `model`: itself when listed, else the pattern it matched (bounded)."""
        if model in provider.config.models:
            return model
        return next((p for p in provider.config.models if fnmatchcase(model, p)), "other")

    def price(self, provider: str) -> Price | None:
        """The price (USD for prompt and completion tokens) of the provider named `provider`; None
        when no provider has that name (a completion no provider answered)."""
        return next((p.price for p in self.providers if p.name == provider), None)

    async def aclose(self) -> None:
        await asyncio.gather(*(p.aclose() for p in self.providers), return_exceptions=True)

    # -- streams ---------------------------------------------------------------------------------
    async def open_stream(
        self, body: dict[str, Any], measure: Measure, client: Dialect = OPENAI, *, text: bool = True
    ) -> UpstreamStream:
        """A stream from the first provider that sends an event; retries and fallbacks happen here,
        and only here, so nothing is ever sent to the client twice. `body` is in the `client`'s
        dialect; each provider is asked in its own. `text`: the chunks' text is read (a client of
        the provider's own dialect, sent its events as they are, needs none)."""
        payloads: dict[tuple[str, bool], bytes] = {}

        async def attempt(provider: Provider, deadline: float) -> UpstreamStream:
            key = (provider.dialect.name, provider.config.include_usage)
            if key not in payloads:
                out = provider.dialect.upstream_body(body, client, stream=True, usage=key[1])
                payloads[key] = _json_bytes(out)
            stream = UpstreamStream(provider, measure, deadline, lean=not text and provider.dialect is client)
            await stream.open(payloads[key])
            return stream

        return await self._first_answer(body, measure, attempt)

    async def complete(
        self, body: dict[str, Any], measure: Measure, client: Dialect = OPENAI
    ) -> tuple[bytes, Completion, Dialect]:
        """A non-streamed completion: the provider's JSON body (secrets redacted), its parse, and
        the dialect it is written in."""
        payloads: dict[str, bytes] = {}

        async def attempt(provider: Provider, deadline: float) -> tuple[bytes, Completion, Dialect]:
            dialect = provider.dialect
            if dialect.name not in payloads:
                payloads[dialect.name] = _json_bytes(
                    dialect.upstream_body(body, client, stream=False, usage=False)
                )
            data, completion = await _complete_once(provider, payloads[dialect.name], measure, deadline)
            return data, completion, dialect

        return await self._first_answer(body, measure, attempt)

    async def _first_answer(
        self,
        body: dict[str, Any],
        measure: Measure,
        attempt: Callable[[Provider, float], Awaitable[T]],
    ) -> T:
        providers = self.route(str(body.get("model")))
        measure.first_attempt = now()
        loop = asyncio.get_running_loop()
        start = loop.time() - (measure.first_attempt - measure.started)
        earlier: list[str] = []  # what failed before the last error, each distinct failure once
        error: RelayError | None = None
        for provider in providers:
            deadline = start + provider.timeouts.total
            retries = provider.retries
            backoff = Backoff(retries.backoff, retries.max_backoff)
            measure.provider, measure.simulated = provider.name, provider.simulated
            for n in range(1, retries.attempts + 1):
                measure.attempts += 1
                try:
                    return await attempt(provider, deadline)
                except RelayError as exc:
                    if error is not None and error.message not in earlier:
                        earlier.append(error.message)
                    error = exc
                if not error.retry or n == retries.attempts:
                    break
                wait = error.retry_after
                if wait is None:
                    wait = backoff.delay(n) if retries.backoff > 0 else 0.0
                elif wait > retries.max_retry_after:
                    break  # not worth waiting for: the next provider may answer now
                if loop.time() + wait >= deadline:
                    break
                log.info("provider %r: %s; retrying in %.2fs", provider.name, error.message, wait)
                await asyncio.sleep(wait)
            if not error.fallback:
                break
            if provider is not providers[-1]:
                log.warning("provider %r failed (%s); falling back", provider.name, error.message)
        assert error is not None
        if measure.attempts > 1:
            before = [m for m in earlier if m != error.message]
            history = f"; before: {'; '.join(before)}" if before else ""
            error.message += f" ({measure.attempts} attempts{history})"
            error.args = (error.message,)
        raise error


def _mark(error: RelayError, *, retry: bool, fallback: bool, retry_after: float | None = None) -> RelayError:
    error.retry, error.fallback, error.retry_after = retry, fallback, retry_after
    return error


def _transport_error(provider: Provider, exc: httpx.TransportError, *, sent: bool) -> RelayError:
    """A transport failure as a relay error; `sent`: the provider had started to answer."""
    name = provider.name
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        error: RelayError = ConnectTimeout(
            f"connect timeout ({provider.timeouts.connect:g}s) expired reaching provider {name!r}"
        )
        return _mark(error, retry=True, fallback=True)
    if isinstance(exc, httpx.ConnectError):
        reason = provider.redactor.text(str(exc)) or type(exc).__name__
        return _mark(
            UpstreamUnreachable(f"cannot connect to provider {name!r}: {reason}"), retry=True, fallback=True
        )
    what = "broke off the stream" if sent else "closed the connection before answering"
    reason = provider.redactor.text(str(exc)) or type(exc).__name__
    return _mark(UpstreamIncomplete(f"provider {name!r} {what}: {reason}"), retry=not sent, fallback=not sent)


async def _status_error(provider: Provider, response: httpx.Response, deadline: float) -> RelayError:
    """An error status from the provider, with its own message (redacted) when it gave one."""
    try:
        async with asyncio.timeout_at(deadline):
            raw = await response.aread()
    except (TimeoutError, httpx.TransportError):
        raw = b""
    message, code = "", None
    try:
        obj = json.loads(raw[:65536])
        err = obj.get("error", obj) if isinstance(obj, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or "")
            code = err.get("code") if isinstance(err.get("code"), str) else None
        elif isinstance(err, str):
            message = err
    except ValueError:
        message = raw[:300].decode("utf-8", "replace").strip()
    status = response.status_code
    text = f"provider {provider.name!r} answered {status}"
    if message:
        text += f": {provider.redactor.text(message)}"
    wait = retry_after(response) if status in (429, 503) else None
    headers = {"Retry-After": str(max(1, round(wait)))} if status == 429 and wait is not None else None
    error = UpstreamStatus(status, text, code=code if status == 429 else None, headers=headers)
    if status in (401, 403):
        error.message = f"{text} (check the provider's api_key on the server)"
        error.args = (error.message,)
    retry = status in _RETRY_STATUSES or status >= 500
    return _mark(error, retry=retry, fallback=retry or status in (401, 403, 404), retry_after=wait)


def _first_token_expired(provider: Provider, deadline: float, first: float) -> RelayError:
    if deadline <= first:
        return TotalTimeout(
            f"total timeout ({provider.timeouts.total:g}s) expired waiting for {provider.name!r}"
        )
    return FirstTokenTimeout(
        f"first token timeout ({provider.timeouts.first_token:g}s) expired: "
        f"provider {provider.name!r} sent no event in time"
    )


async def _complete_once(
    provider: Provider, payload: bytes, measure: Measure, deadline: float
) -> tuple[bytes, Completion]:
    loop = asyncio.get_running_loop()
    first = min(deadline, loop.time() + provider.timeouts.first_token)
    request = provider.request("POST", provider.chat_url, payload)
    response: httpx.Response | None = None
    try:
        try:
            async with asyncio.timeout_at(first):
                response = await provider.send(request)
        except TimeoutError:
            raise _first_token_expired(provider, deadline, first) from None
        if response.status_code >= 400:
            raise await _status_error(provider, response, deadline)
        measure.first_event_in = now()
        parts: list[bytes] = []
        size = 0
        raw = response.aiter_bytes()
        while True:
            limit = min(deadline, loop.time() + provider.timeouts.idle)
            try:
                async with asyncio.timeout_at(limit):
                    part = await anext(raw, None)
            except TimeoutError:
                if limit == deadline:  # the bound that expired, as above
                    raise TotalTimeout(f"total timeout ({provider.timeouts.total:g}s) expired") from None
                raise IdleTimeout(f"idle timeout ({provider.timeouts.idle:g}s) expired mid-answer") from None
            if part is None:
                break
            size += len(part)
            if size > _MAX_BODY:
                raise UpstreamProtocolError(f"provider {provider.name!r} sent more than {_MAX_BODY} bytes")
            parts.append(part)
        data = provider.redactor.data(b"".join(parts))
        try:
            obj = json.loads(data)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
            completion = provider.dialect.parse_completion(obj)
        except ValueError:
            raise _mark(
                UpstreamProtocolError(
                    f"provider {provider.name!r} answered 200 with a body that is not "
                    f"a {provider.dialect.name} completion"
                ),
                retry=False,
                fallback=True,
            ) from None
        measure.usage = completion.usage
        measure.finish_reason = completion.finish_reason
        return data, completion
    except httpx.TransportError as exc:
        raise _transport_error(provider, exc, sent=False) from None
    finally:
        if response is not None:
            await response.aclose()


class UpstreamStream:
    """One provider's event stream for one completion. `open()` returns once the first data event
    is in hand (or raises a relay error that may be retried); iterating yields batches of chunks
    and raises a relay error if the stream fails, times out or breaks off."""

    def __init__(self, provider: Provider, measure: Measure, deadline: float, *, lean: bool = False) -> None:
        self.provider = provider
        self.lean = lean  # plain tokens are recognised without decoding their JSON (no text)
        self.measure = measure
        self.deadline = deadline
        self.state: dict[str, Any] = {}  # the dialect's own, for this stream
        self.parser = SSEParser()
        self.response: httpx.Response | None = None
        self._read: BodyReader | None = None
        self._ready: list[SSEEvent] = []
        self.finished = False  # [DONE] seen, or a finish_reason and then a clean end

    async def open(self, payload: bytes) -> None:
        provider = self.provider
        loop = asyncio.get_running_loop()
        first = min(self.deadline, loop.time() + provider.timeouts.first_token)
        request = provider.request("POST", provider.chat_url, payload)
        try:
            async with asyncio.timeout_at(first):
                self.response = response = await provider.send(request)
                if response.status_code >= 400:
                    raise await _status_error(provider, response, first)
                ctype = response.headers.get("content-type", "")
                if "text/event-stream" not in ctype:
                    raise await self._not_a_stream(response, ctype)
                self._read = body_reader(response)
                while not self._ready:
                    part = await self._read(None)
                    if part is None:
                        raise _mark(
                            UpstreamIncomplete(
                                f"provider {provider.name!r} ended the stream before any event"
                            ),
                            retry=True,
                            fallback=True,
                        )
                    self._ready = self._feed(part)
            self.measure.first_event_in = now()
        except TimeoutError:
            await self.aclose()
            raise _first_token_expired(provider, self.deadline, first) from None
        except httpx.TransportError as exc:
            await self.aclose()
            raise _transport_error(provider, exc, sent=False) from None
        except BaseException:
            await self.aclose()
            raise

    async def _not_a_stream(self, response: httpx.Response, ctype: str) -> RelayError:
        raw = (await response.aread())[:65536]
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("error"), dict | str):
            err = obj["error"]
            message = err.get("message", "") if isinstance(err, dict) else err
            text = (
                f"provider {self.provider.name!r} sent an error: {self.provider.redactor.text(str(message))}"
            )
            return _mark(UpstreamStreamError(text), retry=False, fallback=True)
        return _mark(
            UpstreamProtocolError(
                f"provider {self.provider.name!r} answered a stream request with {ctype or 'no content type'}"
            ),
            retry=False,
            fallback=True,
        )

    def _feed(self, part: bytes) -> list[SSEEvent]:
        try:
            return self.parser.feed(part)
        except SSEProtocolError as exc:
            raise UpstreamProtocolError(f"provider {self.provider.name!r}: {exc}") from None

    async def batches(self) -> AsyncIterator[list[Chunk]]:
        """The stream's chunks, a batch per network read; ends after [DONE]."""
        provider, measure = self.provider, self.measure
        loop = asyncio.get_running_loop()
        idle = provider.timeouts.idle
        read = self._read
        assert read is not None, "open() first"
        while True:
            if self._ready:
                batch, error = self._chunks(self._ready)
                self._ready = []
                if batch:
                    yield batch
                if error is not None:
                    raise error
            if self.finished:
                return
            limit = min(self.deadline, loop.time() + idle)
            try:
                part = await read(limit)
            except TimeoutError:
                # Which bound it was, not the clock's reading: a timer may fire a tick early.
                if limit == self.deadline:
                    raise TotalTimeout(
                        f"total timeout ({provider.timeouts.total:g}s) expired "
                        f"mid-answer from {provider.name!r}"
                    ) from None
                raise IdleTimeout(
                    f"idle timeout ({idle:g}s) expired: provider {provider.name!r} went quiet mid-answer"
                ) from None
            except httpx.TransportError as exc:
                raise _transport_error(provider, exc, sent=True) from None
            if part is None:
                if measure.finish_reason is not None and not self.parser.pending:
                    self.finished = True  # complete, only the [DONE] marker was left out
                    return
                raise UpstreamIncomplete(
                    f"provider {provider.name!r} ended the stream before the answer was complete"
                )
            self._ready = self._feed(part)

    def _chunks(self, events: list[SSEEvent]) -> tuple[list[Chunk], RelayError | None]:
        """The data events as chunks, up to [DONE] or the first bad event (returned as the error)."""
        out: list[Chunk] = []
        error = None
        try:
            self._convert(events, out)
        except RelayError as exc:
            error = exc
        self.measure.text_chars += sum(len(chunk.text) for chunk in out)
        return out, error

    def _convert(self, events: list[SSEEvent], out: list[Chunk]) -> None:
        measure = self.measure
        for event in events:
            data = self.provider.redactor.data(event.data).decode("utf-8", "replace")
            if data == _DONE:
                self.finished = True
                break
            if self.lean and (chunk := self.provider.dialect.lean_event(event, data)) is not None:
                measure.text_chunks += chunk.token
                if not chunk.text.isascii():
                    chunk.text = valid_text(chunk.text)
                out.append(chunk)
                continue
            try:
                obj = json.loads(data)
            except ValueError:
                raise UpstreamProtocolError(
                    f"provider {self.provider.name!r} sent an event that is not JSON"
                ) from None
            if not isinstance(obj, dict):
                raise UpstreamProtocolError(
                    f"provider {self.provider.name!r} sent an event that is not an object"
                )
            if event.event == "error" or obj.get("error"):
                err = obj.get("error", obj)
                message = err.get("message", "") if isinstance(err, dict) else str(err)
                raise UpstreamStreamError(
                    f"provider {self.provider.name!r} sent an error mid-stream: "
                    f"{self.provider.redactor.text(str(message)) or 'no message'}"
                )
            chunk = self.provider.dialect.parse_event(event, data, obj, self.state)
            if chunk is None:
                continue
            if not chunk.text.isascii():  # legal JSON, but a lone surrogate is no text to publish
                chunk.text = valid_text(chunk.text)
            if chunk.usage is not None:
                measure.usage = chunk.usage
            if chunk.finish_reason:
                measure.finish_reason = chunk.finish_reason
            if chunk.token:
                measure.text_chunks += 1
            out.append(chunk)
            if chunk.last:
                self.finished = True
                break

    def handed_on(self, batch: list[Chunk]) -> None:
        """Note the time a batch reached the client (for TTFT and the relay's own overhead)."""
        measure = self.measure
        if measure.first_token_out is None:
            t = now()
            if measure.first_event_out is None:
                measure.first_event_out = t
            if any(c.token for c in batch):
                measure.first_token_out = t

    async def aclose(self) -> None:
        """Close the upstream request (and its connection, when unfinished)."""
        response, self.response = self.response, None
        if response is None:
            return
        try:
            if self.finished and self._read is not None:
                # Read to the end of the body (its last chunk follows [DONE]), so the connection
                # goes back to the pool: the next completion then needs no new TCP handshake.
                until = asyncio.get_running_loop().time() + 1.0
                with contextlib.suppress(TimeoutError, httpx.HTTPError):
                    while await self._read(until) is not None:
                        pass
        finally:
            await response.aclose()


BodyReader = Callable[[float | None], Awaitable[bytes | None]]


def body_reader(response: httpx.Response) -> BodyReader:
    """`read(until)`: the next part of a response's body (None at its end), TimeoutError if none
    comes by `until`. The relay's own transport does this without a timer per part; other
    streams (the simulated provider's) are read through asyncio.timeout_at."""
    stream = response.stream
    if isinstance(stream, Body):
        return stream.read
    parts = aiter(stream)  # type: ignore[arg-type]

    async def read(until: float | None) -> bytes | None:
        async with asyncio.timeout_at(until):
            return await anext(parts, None)

    return read


def _json_bytes(obj: Any) -> bytes:
    return json_text(obj).encode()


async def list_models(relay: Relay, ttl: float = 60.0) -> list[dict[str, Any]]:
    """The models the relay serves: those named in full in the config, and for providers with
    patterns, the provider's own list filtered by them (asked at most once a minute)."""
    cached = relay._models_cache
    if cached is not None and time.monotonic() - cached[0] < ttl:
        return cached[1]
    seen: dict[str, dict[str, Any]] = {}

    async def upstream_models(provider: Provider) -> list[str]:
        if len(provider.listed_models()) == len(provider.config.models):
            return []
        try:
            async with asyncio.timeout(provider.timeouts.connect + 5):
                response = await provider.send(provider.request("GET", provider.models_url))
                await response.aread()
            await response.aclose()
            response.raise_for_status()
            data = response.json().get("data") or []
            return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]
        except (TimeoutError, httpx.HTTPError, ValueError, AttributeError) as exc:
            reason = provider.redactor.text(str(exc)) or type(exc).__name__
            log.warning("provider %r: cannot list its models: %s", provider.name, reason)
            return []

    found = await asyncio.gather(*(upstream_models(p) for p in relay.providers))
    for provider, names in zip(relay.providers, found, strict=True):
        for name in [*provider.listed_models(), *(n for n in names if provider.serves(n))]:
            seen.setdefault(name, {"id": name, "object": "model", "created": 0, "owned_by": provider.name})
    models = list(seen.values())
    relay._models_cache = (time.monotonic(), models)
    return models
