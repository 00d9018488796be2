"""API dialects: how a provider is asked and answers, and how a client asks and is answered.

The relay's common form is an OpenAI chat completions body; each dialect converts its own requests
to and from it, parses its provider's events into normalised `Chunk`s and renders normalised chunks
for its clients. A dialect is one module that defines `dialect = YourDialect()`: in this package,
or in any package that registers it under the entry-point group `dashboard.dialects` (named as
providers' `type`, valued "module:dialect"). Providers name it as their `type`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dashboard.events import encode_frame
from dashboard.plugins import DIALECTS
from dashboard.relay.errors import RelayError
from dashboard.relay.sse import SSEEvent


@dataclass(slots=True)
class ToolDelta:
    """A piece of a streamed tool call. `index` is the provider's own (OpenAI's tool call index,
    Anthropic's content block index); `id` and `name` come with a call's first piece."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""  # a piece of the arguments' JSON text


@dataclass(slots=True)
class ToolCall:
    """A whole tool call of a non-streamed answer; `arguments` is JSON text, as OpenAI writes it."""

    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class Chunk:
    """One upstream event, normalised. `data` and `event` are the event as the provider sent it
    (keys redacted), re-framed as they are for a client of the same dialect."""

    data: str
    event: str | None = None
    text: str = ""  # the text it adds to the answer
    token: bool = False  # it carries a token: text, a tool call or reasoning
    start: bool = False  # the answer begins (the role, or Anthropic's message_start)
    finish_reason: str | None = None  # in OpenAI's words: stop, length, tool_calls, content_filter
    usage: dict[str, Any] | None = None  # prompt_tokens, completion_tokens, total_tokens (so far)
    id: str | None = None
    model: str | None = None
    usage_only: bool = False  # OpenAI's closing usage chunk: relayed only to clients that asked for it
    last: bool = False  # the provider's end-of-stream event ([DONE], message_stop)
    tools: list[ToolDelta] | None = None  # pieces of tool calls
    chars: int = 0  # a lean chunk's text length as written (its `text` is left empty): for metering


@dataclass(slots=True)
class Completion:
    """A non-streamed answer, normalised."""

    text: str
    finish_reason: str | None
    usage: dict[str, Any] | None
    id: str
    model: str
    tool_calls: list[ToolCall] = field(default_factory=list)


def usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    """Token counts in OpenAI's words; `cached`: prompt tokens read from the provider's cache
    (counted in `prompt`, as OpenAI counts them)."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def string_end(data: bytes, start: int) -> int:
    """Where the JSON string whose text begins at `start` in `data` (its opening quote just before)
    ends: the index of its closing quote, one not escaped by an odd run of backslashes; -1 when it
    does not end in `data`."""
    end = data.find(b'"', start)
    while end > 0:
        before = end
        while data[before - 1] == 0x5C:  # the string's opening quote stops this run
            before -= 1
        if (end - before) % 2 == 0:
            return end
        end = data.find(b'"', end + 1)
    return end


def cached_tokens(counts: dict[str, Any] | None) -> int:
    """The cached prompt tokens of OpenAI-shaped token counts (0 when not reported)."""
    details = (counts or {}).get("prompt_tokens_details")
    value = details.get("cached_tokens") if isinstance(details, dict) else None
    return value if type(value) is int else 0


class Renderer:
    """Writes one streamed answer for a client: frames for each batch, then the end or an error."""

    def frames(self, chunks: list[Chunk]) -> bytes:
        raise NotImplementedError

    def end(self) -> bytes:
        raise NotImplementedError

    def error(self, error: RelayError) -> bytes:
        raise NotImplementedError


class Dialect:
    """One API dialect. `path` is the completion endpoint under a provider's base_url."""

    name = ""
    path = ""
    # The key of a plain event's text, as written before its JSON string (`"content":"`): the
    # relay's fast path learns from it how a provider writes its plain events (see forward.py).
    plain_text_key = b""

    # -- as a provider speaks it -----------------------------------------------------------------
    def auth_headers(self, key: str) -> dict[str, str]:
        raise NotImplementedError

    def upstream_body(
        self, body: dict[str, Any], source: Dialect, *, stream: bool, usage: bool
    ) -> dict[str, Any]:
        """The provider's request for a client's `body`, written in the `source` dialect; `usage`:
        ask for token counts when the dialect makes them optional."""
        out = body if source is self else self.from_common(source.to_common(body))
        return {**out, "stream": stream}

    def parse_event(self, event: SSEEvent, data: str, obj: dict[str, Any], state: dict) -> Chunk | None:
        """An upstream event as a chunk (None: nothing for the client, e.g. a ping); `state` is the
        stream's own. Error events are recognised before this is called."""
        raise NotImplementedError

    def lean_event(self, event: SSEEvent, data: str) -> Chunk | None:
        """The event as a chunk without decoding its JSON, when a search of its text shows it is
        a plain token that carries no usage, error or finish (its `text` then left empty: for
        clients of the same dialect, which are sent the event as it is). None: parse it in full."""
        return None

    def plain_events(self, events: bytes) -> tuple[int, int] | None:
        """How many of `events` (whole events as the provider sent them, LF line ends) carry a
        token, and the length of their text as written, when a search of the bytes shows that
        every one of them is a plain event of this dialect: one a client of the same dialect is
        sent as it is, and that tells the relay nothing but that (no usage, finish, error, role or
        tool call). None: at least one is not (each is then parsed in full). Only for events the
        relay's own HTTP client reads (see forward.py)."""
        return None

    def parse_completion(self, obj: dict[str, Any]) -> Completion:
        """A non-streamed answer; ValueError when it is not one."""
        raise NotImplementedError

    # -- as a client speaks it -------------------------------------------------------------------
    def wants_usage(self, body: dict[str, Any]) -> bool:
        """Whether a client's streamed request asks for token counts."""
        raise NotImplementedError

    def to_common(self, body: dict[str, Any]) -> dict[str, Any]:
        """A client's request as chat completions; Untranslatable (a 400 naming the parameter) for
        what chat completions cannot carry faithfully: nothing is dropped without a word."""
        raise NotImplementedError

    def from_common(self, body: dict[str, Any]) -> dict[str, Any]:
        """A chat completions request as this dialect's provider takes it; Untranslatable as above."""
        raise NotImplementedError

    def renderer(self, source: Dialect, *, usage: bool) -> Renderer:
        """How a stream from a `source` provider is written to this dialect's client; `usage`: the
        client asked for token counts."""
        if source is self:
            return PassThrough(self, usage=usage)
        return self.converter(usage=usage)

    def converter(self, *, usage: bool) -> Renderer:
        """A renderer for streams from providers of another dialect."""
        raise NotImplementedError

    def stream_tail(self) -> bytes:
        """What ends a stream after the provider's last event (OpenAI's `[DONE]`)."""
        return b""

    def completion_body(self, completion: Completion) -> dict[str, Any]:
        raise NotImplementedError

    def error_body(self, status: int, message: str, code: str, type_: str | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def error_frame(self, error: RelayError) -> bytes:
        """A relay error as the event that ends a stream for this dialect's client."""
        raise NotImplementedError


class PassThrough(Renderer):
    """The provider speaks the client's dialect: each event re-framed from its parsed data."""

    def __init__(self, dialect: Dialect, *, usage: bool) -> None:
        self.dialect = dialect
        self.usage = usage

    def frames(self, chunks: list[Chunk]) -> bytes:
        usage = self.usage
        return b"".join(encode_frame(c.data, c.event) for c in chunks if usage or not c.usage_only)

    def end(self) -> bytes:
        return self.dialect.stream_tail()

    def error(self, error: RelayError) -> bytes:
        return self.dialect.error_frame(error)


def get(name: str) -> Dialect:
    """The dialect `name`: built in, or registered by a package; KeyError when there is none."""
    return DIALECTS.load(name)


def known() -> list[str]:
    """Every dialect name a provider may use as its `type`."""
    return DIALECTS.names()
