"""One completion's life, the same for the /v1 routes and the `ai` feed: admission (the key's limits
and budget), the upstream stream or answer, then, whatever failed on the way, settlement of the
reservation, the metrics and one log line.

    completion = await completions.admit(account, body, measure)  # refused: HTTPError, RelayError
    async with completion:
        upstream = await completion.open_stream()  # or: await completion.complete(client)
        async for batch in upstream.batches():
            ...  # hand the batch on, then: upstream.handed_on(batch)
    completion.summary()  # the measured fields of the `done` event
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any

from dashboard.relay import dialects
from dashboard.relay.errors import RelayError
from dashboard.relay.keys import NO_KEY, Account, Keys, Ticket
from dashboard.relay.metrics import Measure, now

if TYPE_CHECKING:
    from dashboard.relay.dialects import Completion as Answer
    from dashboard.relay.dialects import Dialect
    from dashboard.relay.stream import UpstreamStream
    from dashboard.relay.upstream import Relay

log = logging.getLogger("dashboard.relay")

OPENAI = dialects.get("openai")


class Completions:
    """Where every completion starts: the relay's providers and the api keys' accounting."""

    def __init__(self, relay: Relay, keys: Keys) -> None:
        self.relay = relay
        self.keys = keys

    def charged_to(self, token: str | None) -> Account:
        """Who a request with api token `token` (already checked; None: it needs none) is charged
        to: the named key whose token it is, else an account with no limits."""
        return (self.keys.by_token(token) if token is not None else None) or Account(NO_KEY)

    async def admit(
        self, account: Account, body: dict[str, Any], measure: Measure, client: Dialect = OPENAI
    ) -> Completion:
        """`body` (a completion request in the `client` dialect, naming its `model`) admitted for
        `account`, or refused: RelayError when no provider serves the model or one of them could
        not be asked it faithfully (Untranslatable), HTTPError 403 / 429 / 503 from the key's model
        list, limits and budget (see `Keys.admit`)."""
        model = str(body["model"])
        providers = self.relay.route(model)
        self.relay.check_translation(body, client, providers)
        measure.label = self.relay.model_label(providers[0], model)
        ticket = await self.keys.admit(account, body, providers, measure.label)
        return Completion(self.relay, self.keys, body, measure, ticket)


class Completion:
    """One admitted completion, run inside `async with completion:`. Leaving the block, however it
    is left (an answer, a relay error, the client gone, the server stopping, a bug), closes the
    upstream request, records the metrics, logs one line, and settles the reservation even when
    one of those fails."""

    def __init__(self, relay: Relay, keys: Keys, body: dict[str, Any], measure: Measure, ticket: Ticket):
        self.relay = relay
        self.keys = keys
        self.body = body
        self.measure = measure
        self.ticket = ticket
        self.upstream: UpstreamStream | None = None

    async def open_stream(self, client: Dialect = OPENAI, *, text: bool = True) -> UpstreamStream:
        """The streamed answer (see `Relay.open_stream`); closed when the block ends at the latest."""
        self.upstream = await self.relay.open_stream(self.body, self.measure, client, text=text)
        return self.upstream

    async def complete(self, client: Dialect = OPENAI) -> tuple[bytes, Answer, Dialect]:
        """The answer in one piece (see `Relay.complete`), taken as handed on when it arrives."""
        data, answer, dialect = await self.relay.complete(self.body, self.measure, client)
        self.measure.first_event_out = self.measure.ended = now()
        self.measure.text_chars = len(answer.text) + sum(len(call.arguments) for call in answer.tool_calls)
        return data, answer, dialect

    def failed(self, error: RelayError) -> None:
        """The relay failed, and the caller answers the error itself."""
        self.measure.outcome = "timeout" if error.status == 504 else "error"

    def stopped(self) -> None:
        """Stopped on purpose by whoever asked for it (the `ai` feed's stop route): no failure."""
        self.measure.outcome = "stopped"

    async def close_stream(self) -> None:
        """The answer is over: its end is timed and the upstream request closed."""
        self.measure.ended = self.measure.ended or now()
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            await upstream.aclose()

    def summary(self) -> dict[str, Any]:
        """The measured fields of the completion (the `done` event's), its cost included."""
        return self.measure.summary(self.relay.price(self.measure.provider))

    async def __aenter__(self) -> Completion:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(error, RelayError):
            self.failed(error)
        elif isinstance(error, asyncio.CancelledError):
            self.measure.outcome = "cancelled"
        elif error is not None:
            self.measure.outcome = "error"
        try:
            try:
                await self.close_stream()
            finally:
                self.record()
                self.log()
        finally:  # whatever failed above, the reservation is settled
            await self.keys.settle(self.ticket, self.measure, self.measure.text_chars)

    def record(self) -> None:
        """Into the Prometheus metrics."""
        self.measure.record()

    def log(self) -> None:
        """The completion's one line in the server log."""
        measure = self.measure
        ttft, overhead = measure.ttft(), measure.overhead()
        log.info(
            "relay %s model=%s provider=%s attempts=%d ttft_ms=%s overhead_ms=%s tokens=%s duration_ms=%s",
            measure.outcome,
            measure.model,
            measure.provider or "-",
            measure.attempts,
            None if ttft is None else round(ttft * 1000, 3),
            None if overhead is None else round(overhead * 1000, 3),
            (measure.usage or {}).get("completion_tokens", measure.text_chunks),
            round(((measure.ended or now()) - measure.started) * 1000, 3),
        )
