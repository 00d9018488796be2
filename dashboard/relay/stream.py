"""One provider's event stream for one completion: opened once its first event is in hand, then read
in batches of chunks under the idle and total timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from dashboard.events import valid_text
from dashboard.relay.capacity import Slot
from dashboard.relay.dialects import Chunk, Dialect
from dashboard.relay.errors import (
    IdleTimeout,
    RelayError,
    TotalTimeout,
    UpstreamIncomplete,
    UpstreamProtocolError,
    UpstreamStreamError,
)
from dashboard.relay.failures import first_token_expired, mark, status_error, transport_error
from dashboard.relay.forward import Forward, Write
from dashboard.relay.metrics import Measure, now
from dashboard.relay.providers import Provider
from dashboard.relay.sse import SSEEvent, SSEParser, SSEProtocolError
from dashboard.relay.transport import Body, Sink

_DONE = "[DONE]"


class UpstreamStream:
    """One provider's event stream for one completion. `open()` returns once the first data event
    is in hand (or raises a relay error that may be retried); iterating yields batches of chunks
    and raises a relay error if the stream fails, times out or breaks off."""

    def __init__(
        self, provider: Provider, measure: Measure, deadline: float, slot: Slot, *, lean: bool = False
    ) -> None:
        self.provider = provider
        self.slot = slot  # the room taken at the provider, held until the stream is closed
        self.lean = lean  # plain tokens are recognised without decoding their JSON (no text)
        self.measure = measure
        self.deadline = deadline
        self.state: dict[str, Any] = {}  # the dialect's own, for this stream
        self.parser = SSEParser()
        self.response: httpx.Response | None = None
        self._read: BodyReader | None = None
        self._ready: list[SSEEvent] = []
        self._forward: Forward | None = None
        self.finished = False  # [DONE] seen, or a finish_reason and then a clean end

    async def open(self, payload: bytes) -> None:
        provider = self.provider
        loop = asyncio.get_running_loop()
        first = min(self.deadline, loop.time() + provider.timeouts.first_token)
        try:
            async with asyncio.timeout_at(first):
                self.response = response = await provider.post(payload)
                if response.status_code >= 400:
                    raise await status_error(provider, response, first)
                ctype = response.headers.get("content-type", "")
                if "text/event-stream" not in ctype:
                    raise await self._not_a_stream(response, ctype)
                self._read = body_reader(response)
                while not self._ready:
                    part = await self._read(None)
                    if part is None:
                        raise mark(
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
            raise first_token_expired(provider, self.deadline, first) from None
        except httpx.TransportError as exc:
            await self.aclose()
            raise transport_error(provider, exc, sent=False) from None
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
            return mark(UpstreamStreamError(text), retry=False, fallback=True)
        return mark(
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

    def forward(self, write: Write) -> None:
        """Have the provider's plain events written to the client by `write` as they arrive, while
        `batches()` waits (see forward.py): a lean stream read by the relay's own HTTP client only."""
        dialect = self.provider.dialect
        if (
            self.lean
            and type(dialect).plain_events is not Dialect.plain_events  # it knows plain events
            and self.response is not None
            and isinstance(self.response.stream, Body)
        ):
            self._forward = Forward(write, dialect, self.provider.redactor.secret_bytes, self.measure)

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
            sink = self._forward if not self.parser.pending else None  # it starts on an event
            try:
                part = await read(limit, sink)
            except TimeoutError:
                if sink is not None and limit != self.deadline and sink.last + idle > loop.time():
                    continue  # not idle: the events went straight to the client meanwhile
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
                raise transport_error(provider, exc, sent=True) from None
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
        self.measure.text_chars += sum(
            len(c.text) + c.chars + sum(len(t.arguments) for t in c.tools or ()) for c in out
        )
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
        """Close the upstream request (and its connection, when unfinished), and give back its room
        at the provider."""
        response, self.response = self.response, None
        if response is None:
            await self.slot.release(self.measure)
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
            await self.slot.release(self.measure)  # never suspends: a cancellation cannot skip it
            await response.aclose()


BodyReader = Callable[..., Awaitable[bytes | None]]  # (until, sink=None)


def body_reader(response: httpx.Response) -> BodyReader:
    """`read(until, sink=None)`: the next part of a response's body (None at its end), TimeoutError
    if none comes by `until`. The relay's own transport does this without a timer per part, and
    hands what arrives meanwhile to `sink` first; other streams (the simulated provider's) are
    read through asyncio.timeout_at, and the sink is not used."""
    stream = response.stream
    if isinstance(stream, Body):
        return stream.read
    parts = aiter(stream)  # type: ignore[arg-type]

    async def read(until: float | None, sink: Sink | None = None) -> bytes | None:
        async with asyncio.timeout_at(until):
            return await anext(parts, None)

    return read
