"""The relay's core: routes a request to providers, and retries and falls back until the first event
(failures.py classifies what went wrong; stream.py reads the chosen provider's stream).

Both `POST /v1/chat/completions` and the `ai` feed reach `Relay.open_stream` / `Relay.complete` through
the completion lifecycle (lifecycle.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from fnmatch import fnmatchcase
from typing import Any, TypeVar

import httpx

from dashboard.backoff import Backoff
from dashboard.config import AIConfig
from dashboard.errors import HTTPError
from dashboard.events import json_text
from dashboard.relay import dialects
from dashboard.relay.capacity import Slot
from dashboard.relay.dialects import Completion, Dialect
from dashboard.relay.errors import (
    FirstTokenTimeout,
    IdleTimeout,
    NoProvider,
    RelayError,
    TotalTimeout,
    Untranslatable,
    UpstreamProtocolError,
)
from dashboard.relay.failures import first_token_expired, mark, status_error, transport_error
from dashboard.relay.keys import prompt_tokens
from dashboard.relay.metrics import Measure, now
from dashboard.relay.providers import Provider
from dashboard.relay.stream import UpstreamStream
from dashboard.tasks import cancel_and_wait

log = logging.getLogger("dashboard.relay")

T = TypeVar("T")
Price = Callable[[int, int], float | None]  # prompt and completion tokens -> USD, None without prices
OPENAI = dialects.get("openai")
_MAX_BODY = 64 << 20  # a non-streamed answer larger than this is not a chat completion
_ROUTES_KEPT = 1024  # models whose providers are remembered (requests name a few, again and again)


class Relay:
    """The configured providers, and how one request finds one that answers."""

    def __init__(self, config: AIConfig) -> None:
        self.providers: list[Provider] = []
        self._retiring: set[asyncio.Task[None]] = set()  # providers a reload let go, closing
        self._turns: dict[tuple[str, ...], int] = {}  # round_robin: requests so far per set of providers
        self.configure(config)

    def configure(self, config: AIConfig) -> None:
        """Serve `config`'s providers to new requests from now on (a reload). A provider whose
        settings did not change keeps its pooled connections; requests in flight finish on the
        provider they started with."""
        before = {provider.name: provider for provider in self.providers}
        self.providers = [
            before.pop(p.name) if p.name in before and before[p.name].config == p else Provider(p)
            for p in config.providers
        ]
        for provider in before.values():
            task = asyncio.get_running_loop().create_task(
                self._retire(provider), name=f"retire:{provider.name}"
            )
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        self._models_cache: tuple[float, list[dict[str, Any]]] | None = None
        self._routes: dict[str, list[Provider]] = {}  # model -> the providers serving it (see route)
        self.routing = config.routing

    @staticmethod
    async def _retire(provider: Provider) -> None:
        """Close a provider a reload let go, once the requests it may still serve are over."""
        try:
            await asyncio.sleep(provider.timeouts.total)
        finally:
            await provider.aclose()

    def in_order(self, providers: list[Provider]) -> list[Provider]:
        """`providers` (those serving one model) in the order to try them, by the configured
        `routing`: as configured (fallback), taking turns (round_robin), or the one with the fewest
        requests in flight or waiting first (least_busy); those cooling down after failures last."""
        if self.routing == "round_robin" and len(providers) > 1:
            key = tuple(p.name for p in providers)
            turn = self._turns.get(key, 0)
            self._turns[key] = turn + 1
            first = turn % len(providers)
            providers = providers[first:] + providers[:first]
        elif self.routing == "least_busy":
            providers = sorted(providers, key=lambda p: p.capacity.busy())  # ties: as configured
        return sorted(providers, key=lambda p: p.capacity.cooling())

    def route(self, model: str) -> list[Provider]:
        """The providers that serve `model`, in the configured order (the first is tried first)."""
        providers = self._routes.get(model)
        if providers is not None:
            return providers
        providers = [p for p in self.providers if p.serves(model)]
        if providers:
            if len(self._routes) >= _ROUTES_KEPT:
                self._routes.clear()
            self._routes[model] = providers
        else:
            served = ", ".join(sorted({m for p in self.providers for m in p.config.models})) or "none"
            raise NoProvider(f"no provider serves model {model!r} (configured models: {served})")
        return providers

    def check_translation(self, body: dict[str, Any], client: Dialect, providers: list[Provider]) -> None:
        """Refuses, before anything is reserved or sent, a request in the `client` dialect that a
        provider of another dialect among `providers` (those that may answer it) could only be
        sent with something left out: Untranslatable (400) naming the parameter and the provider."""
        for provider in providers:
            if provider.dialect is client:
                continue
            try:
                provider.dialect.upstream_body(body, client, stream=False, usage=False)
            except Untranslatable as exc:
                exc.message = f"{exc.message}; provider {provider.name!r} is of type {provider.dialect.name}"
                exc.args = (exc.message,)
                raise
            except (AttributeError, KeyError, TypeError, ValueError):
                # A field of the wrong shape, which the provider of the client's own dialect would refuse.
                raise malformed(provider.dialect.name) from None

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
        await cancel_and_wait(self._retiring)  # each closes its provider as it ends
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

        async def attempt(provider: Provider, deadline: float, slot: Slot) -> UpstreamStream:
            key = (provider.dialect.name, provider.config.include_usage)
            if key not in payloads:
                out = provider.dialect.upstream_body(body, client, stream=True, usage=key[1])
                payloads[key] = _json_bytes(out)
            lean = not text and provider.dialect is client
            stream = UpstreamStream(provider, measure, deadline, slot, lean=lean)
            await stream.open(payloads[key])
            return stream  # it holds the slot until it is closed

        return await self._first_answer(body, measure, attempt)

    async def complete(
        self, body: dict[str, Any], measure: Measure, client: Dialect = OPENAI
    ) -> tuple[bytes, Completion, Dialect]:
        """A non-streamed completion: the provider's JSON body (secrets redacted), its parse, and
        the dialect it is written in."""
        payloads: dict[str, bytes] = {}

        async def attempt(
            provider: Provider, deadline: float, slot: Slot
        ) -> tuple[bytes, Completion, Dialect]:
            dialect = provider.dialect
            if dialect.name not in payloads:
                payloads[dialect.name] = _json_bytes(
                    dialect.upstream_body(body, client, stream=False, usage=False)
                )
            try:
                data, completion = await _complete_once(provider, payloads[dialect.name], measure, deadline)
            finally:
                await slot.release(measure)
            return data, completion, dialect

        return await self._first_answer(body, measure, attempt)

    async def _first_answer(
        self,
        body: dict[str, Any],
        measure: Measure,
        attempt: Callable[[Provider, float, Slot], Awaitable[T]],
    ) -> T:
        remaining = self.in_order(self.route(str(body.get("model"))))
        tokens = _tokens(body) if any(p.capacity.limits.tpm for p in remaining) else 0
        measure.first_attempt = now()
        loop = asyncio.get_running_loop()
        start = loop.time() - (measure.first_attempt - measure.started)
        earlier: list[str] = []  # what failed before the last error, each distinct failure once
        error: RelayError | None = None
        while remaining:
            provider, slot = await _room(remaining, tokens, start)
            remaining.remove(provider)
            deadline = start + provider.timeouts.total
            retries = provider.retries
            backoff = Backoff(retries.backoff, retries.max_backoff)
            measure.provider, measure.simulated = provider.name, provider.simulated
            for n in range(1, retries.attempts + 1):
                if n > 1:
                    provider, slot = await _room([provider], tokens, start)
                measure.attempts += 1
                try:
                    answer = await attempt(provider, deadline, slot)
                except BaseException as exc:
                    await slot.release(measure)  # the attempt's own closing gives it back too: once
                    if not isinstance(exc, RelayError):
                        raise
                    if error is not None and error.message not in earlier:
                        earlier.append(error.message)
                    error = exc
                    if exc.fallback:  # the provider's failure, not the request's
                        provider.capacity.failed()
                else:
                    provider.capacity.succeeded()
                    return answer
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
            if remaining:
                log.warning("provider %r failed (%s); falling back", provider.name, error.message)
        assert error is not None
        if measure.attempts > 1:
            before = [m for m in earlier if m != error.message]
            history = f"; before: {'; '.join(before)}" if before else ""
            error.message += f" ({measure.attempts} attempts{history})"
            error.args = (error.message,)
        raise error


def malformed(dialect: str) -> HTTPError:
    """A request whose fields are not of the shapes its dialect gives them."""
    message = f"the request has a field of the wrong shape, and cannot be translated to {dialect}"
    return HTTPError(400, message, "invalid_request")


async def _complete_once(
    provider: Provider, payload: bytes, measure: Measure, deadline: float
) -> tuple[bytes, Completion]:
    loop = asyncio.get_running_loop()
    first = min(deadline, loop.time() + provider.timeouts.first_token)
    response: httpx.Response | None = None
    try:
        try:
            async with asyncio.timeout_at(first):
                response = await provider.post(payload)
        except TimeoutError:
            raise first_token_expired(provider, deadline, first) from None
        if response.status_code >= 400:
            raise await status_error(provider, response, deadline)
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
            raise mark(
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
        raise transport_error(provider, exc, sent=False) from None
    finally:
        if response is not None:
            await response.aclose()


async def _room(providers: list[Provider], tokens: int, start: float) -> tuple[Provider, Slot]:
    """The first of `providers` with room for the request now (those cooling down only when all
    are), else the first, once the request's turn in its queue comes: QueueFull (429) when the
    queue is full, a first_token (or total) timeout (504) when it does not come in time. `start`:
    when the request arrived (the event loop's time)."""
    cool = [p for p in providers if not p.capacity.cooling()] or providers
    for provider in cool:
        slot = await provider.capacity.take_now(tokens)
        if slot is not None:
            return provider, slot
    first = providers[0]
    loop = asyncio.get_running_loop()
    deadline = start + first.timeouts.total
    until = min(deadline, loop.time() + first.timeouts.first_token)
    try:
        return first, await first.capacity.wait_for_room(tokens, until)
    except TimeoutError:
        pass
    waited = f"waiting for room at provider {first.name!r} (at its max_concurrency, rpm or tpm)"
    if until == deadline:
        raise TotalTimeout(f"total timeout ({first.timeouts.total:g}s) expired {waited}")
    raise FirstTokenTimeout(f"first token timeout ({first.timeouts.first_token:g}s) expired {waited}")


def _tokens(body: dict[str, Any]) -> int:
    """A request's tokens as a provider's tpm counts them until its usage is known: the prompt's
    estimate (as api keys count it) and the answer's max_tokens."""
    limit = body.get("max_tokens") or body.get("max_completion_tokens")
    return prompt_tokens(body) + (limit if type(limit) is int and limit > 0 else 0)


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
