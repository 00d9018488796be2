"""Anthropic Messages (`POST {base_url}/messages`, `x-api-key`, `anthropic-version`)."""

from __future__ import annotations

import json
from typing import Any

from dashboard.events import encode_frame
from dashboard.relay.dialects import (
    Chunk,
    Completion,
    Dialect,
    Renderer,
    ToolCall,
    ToolDelta,
    cached_tokens,
    string_end,
    usage,
)
from dashboard.relay.dialects._anthropic_requests import to_chat, to_messages
from dashboard.relay.dialects.openai import dumps
from dashboard.relay.errors import RelayError, UpstreamProtocolError
from dashboard.relay.sse import SSEEvent

VERSION = "2023-06-01"
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# A plain text delta as the API writes it (compact JSON, its keys in this order): the one event a
# client of this dialect is sent as it is, which tells the relay nothing but its text. A line
# `event: content_block_delta`, then one `data:` line of _DATA, the index's digits, _TEXT, the text
# as a JSON string and _DATA_END.
_DATA = b'{"type":"content_block_delta","index":'
_EVENT = b"event: content_block_delta\ndata: " + _DATA
_TEXT = b',"delta":{"type":"text_delta","text":"'
_DATA_END = b'"}}'
_EVENT_END = _DATA_END + b"\n\n"
_INDEX_DIGITS = 9  # at most: a text delta whose index is longer is parsed in full
_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _is_text(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") == "text"


def _text(content: Any) -> str:
    """The text of a content string or list of blocks (system prompts, OpenAI content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(b.get("text", "")) for b in content if _is_text(b))
    return ""


def _anthropic_usage(u: dict[str, Any] | None) -> dict[str, int]:
    """OpenAI's token counts in Anthropic's words: its input_tokens leave out the cached ones."""
    u = u or {}
    cached = cached_tokens(u)
    out = {"input_tokens": u.get("prompt_tokens", 0) - cached, "output_tokens": u.get("completion_tokens", 0)}
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


def _common_usage(counts: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's token counts in OpenAI's words (cache reads and writes are prompt tokens);
    `state` keeps the prompt's counts of a stream's message_start for its message_delta."""
    if "input_tokens" in counts:
        state["cached"] = counts.get("cache_read_input_tokens") or 0
        written = counts.get("cache_creation_input_tokens") or 0
        state["prompt"] = (counts.get("input_tokens") or 0) + state["cached"] + written
    return usage(state.get("prompt", 0), counts.get("output_tokens") or 0, state.get("cached", 0))


class Anthropic(Dialect):
    name = "anthropic"
    plain_text_key = b'"text":"'
    path = "/messages"

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key, "anthropic-version": VERSION}

    def parse_event(self, event: SSEEvent, data: str, obj: dict[str, Any], state: dict) -> Chunk | None:
        kind = obj.get("type") or event.event
        if kind == "ping":
            return None
        chunk = Chunk(data, event.event or kind)
        index = obj.get("index")
        if kind == "content_block_delta":
            delta = obj.get("delta") or {}
            if delta.get("type") == "text_delta":
                chunk.text = str(delta.get("text") or "")
            elif delta.get("type") == "input_json_delta" and type(index) is int:
                chunk.tools = [ToolDelta(index, arguments=str(delta.get("partial_json") or ""))]
            chunk.token = bool(chunk.text or delta.get("partial_json") or delta.get("thinking"))
        elif kind == "content_block_start":
            block = obj.get("content_block") or {}
            if block.get("type") == "tool_use" and type(index) is int:
                chunk.tools = [ToolDelta(index, block.get("id"), block.get("name"))]
                chunk.token = True
        elif kind == "message_start":
            message = obj.get("message") or {}
            chunk.start, chunk.id, chunk.model = True, message.get("id"), message.get("model")
            chunk.usage = _common_usage(message.get("usage") or {}, state)
        elif kind == "message_delta":
            reason = (obj.get("delta") or {}).get("stop_reason")
            chunk.finish_reason = _FINISH.get(reason, reason)
            chunk.usage = _common_usage(obj.get("usage") or {}, state)
        elif kind == "message_stop":
            chunk.last = True
        return chunk

    def lean_event(self, event: SSEEvent, data: str) -> Chunk | None:
        if event.event != "content_block_delta" or "\n" in data:  # a line end: several `data:` lines
            return None
        raw = data.encode()
        span = _text_span(raw, 0, _DATA)
        if span is None or raw[span[1] :] != _DATA_END:
            return None
        start, end = span
        return Chunk(data, event.event, token=end > start, chars=end - start)

    def plain_events(self, events: bytes) -> tuple[int, int] | None:
        # Each event is checked whole, from its first byte to its last: the fixed parts, the index's
        # digits and the text's closing quote; two line ends and a blank line each, and no others.
        n = events.count(b"\n\n")
        if events.count(b"\n") != 3 * n:
            return None
        tokens = chars = at = 0
        for _ in range(n):
            span = _text_span(events, at, _EVENT)
            if span is None or not events.startswith(_EVENT_END, span[1]):
                return None
            start, end = span
            tokens += end > start
            chars += end - start
            at = end + len(_EVENT_END)
        return (tokens, chars) if at == len(events) else None

    def parse_completion(self, obj: dict[str, Any]) -> Completion:
        if obj.get("type") != "message" or not isinstance(obj.get("content"), list):
            raise ValueError("not a message")
        reason = obj.get("stop_reason")
        calls = [
            ToolCall(str(b.get("id") or ""), str(b.get("name") or ""), dumps(b.get("input") or {}))
            for b in obj["content"]
            if isinstance(b, dict) and b.get("type") == "tool_use"
        ]
        return Completion(
            text=_text(obj["content"]),
            finish_reason=_FINISH.get(reason, reason),
            usage=_common_usage(obj.get("usage") or {}, {}),
            id=str(obj.get("id") or "msg_relay"),
            model=str(obj.get("model") or ""),
            tool_calls=calls,
        )

    def wants_usage(self, body: dict[str, Any]) -> bool:
        return True  # every Messages stream carries its token counts

    def to_common(self, body: dict[str, Any]) -> dict[str, Any]:
        return to_chat(body)

    def from_common(self, body: dict[str, Any]) -> dict[str, Any]:
        return to_messages(body)

    def converter(self, *, usage: bool) -> Renderer:
        return ToAnthropic()

    def completion_body(self, completion: Completion) -> dict[str, Any]:
        return {
            "id": completion.id,
            "type": "message",
            "role": "assistant",
            "model": completion.model,
            "content": _content(completion),
            "stop_reason": _STOP.get(completion.finish_reason or "", completion.finish_reason),
            "stop_sequence": None,
            "usage": _anthropic_usage(completion.usage),
        }

    def error_body(self, status: int, message: str, code: str, type_: str | None = None) -> dict[str, Any]:
        """An error as the Anthropic SDKs read it: `{"type": "error", "error": {"type", "message"}}`."""
        kind = _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    def error_frame(self, error: RelayError) -> bytes:
        body = self.error_body(error.status, error.message, error.code)
        return encode_frame(dumps(body), "error")


def _text_span(data: bytes, at: int, head: bytes) -> tuple[int, int] | None:
    """Where the text of the text delta at `at` in `data` begins and ends (its closing quote), when
    the delta opens with `head`, then its index and the text: None for any other."""
    if not data.startswith(head, at):
        return None
    digits = at + len(head)
    start = data.find(_TEXT, digits, digits + _INDEX_DIGITS + len(_TEXT))
    if start < 0 or not data[digits:start].isdigit():
        return None
    start += len(_TEXT)
    end = string_end(data, start)
    return None if end < 0 else (start, end)


def _content(completion: Completion) -> list[dict[str, Any]]:
    """A non-streamed answer's content blocks: its text, then its tool calls."""
    blocks: list[dict[str, Any]] = []
    if completion.text or not completion.tool_calls:
        blocks.append({"type": "text", "text": completion.text})
    for call in completion.tool_calls:
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            raise UpstreamProtocolError(
                f"the provider sent tool call {call.id!r} with arguments that are not JSON"
            ) from None
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": arguments})
    return blocks


class ToAnthropic(Renderer):
    """A stream from a provider of another dialect, as Messages events: its text and each of its
    tool calls in content blocks of their own, one after the other."""

    def __init__(self) -> None:
        self.id = "msg_relay"
        self.model = ""
        self.started = False
        self.blocks = 0  # content blocks begun so far
        self.open: str | None = None  # the kind of the block open now: "text" or "tool_use"
        self.call: int | None = None  # the provider's index of the tool call in the open block
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def _start(self) -> bytes:
        self.started = True
        message = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _anthropic_usage(self.usage),
        }
        return _event({"type": "message_start", "message": message})

    def _begin(self, block: dict[str, Any]) -> bytes:
        """Closes the open block, if any, and begins `block`."""
        out = self._close()
        self.open = block["type"]
        self.blocks += 1
        return out + _event({"type": "content_block_start", "index": self.blocks - 1, "content_block": block})

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = self.call = None
        return _event({"type": "content_block_stop", "index": self.blocks - 1})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event({"type": "content_block_delta", "index": self.blocks - 1, "delta": delta})

    def frames(self, chunks: list[Chunk]) -> bytes:
        out: list[bytes] = []
        for c in chunks:
            if c.id:
                self.id = c.id
            if c.model:
                self.model = c.model
            if c.usage is not None:
                self.usage = c.usage
            if c.finish_reason:
                self.finish_reason = c.finish_reason
            if not self.started:
                out.append(self._start())
            if c.text:
                if self.open != "text":
                    out.append(self._begin({"type": "text", "text": ""}))
                out.append(self._delta({"type": "text_delta", "text": c.text}))
            for tool in c.tools or ():
                out.append(self._tool(tool))
        return b"".join(out)

    def _tool(self, tool: ToolDelta) -> bytes:
        out = b""
        if tool.index != self.call:
            if tool.id is None and tool.name is None:
                # A call resumed after another began: Messages blocks cannot interleave.
                raise UpstreamProtocolError("the provider interleaved the arguments of parallel tool calls")
            block = {
                "type": "tool_use",
                "id": tool.id or f"toolu_{self.blocks}",
                "name": tool.name,
                "input": {},
            }
            out = self._begin(block)
            self.call = tool.index
        if tool.arguments:
            out += self._delta({"type": "input_json_delta", "partial_json": tool.arguments})
        return out

    def end(self) -> bytes:
        out = [] if self.started else [self._start()]
        out.append(self._close())
        reason = _STOP.get(self.finish_reason or "", self.finish_reason)
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": _anthropic_usage(self.usage),
        }
        out.append(_event(delta))
        out.append(_event({"type": "message_stop"}))
        return b"".join(out)

    def error(self, error: RelayError) -> bytes:
        return dialect.error_frame(error)


def _event(obj: dict[str, Any]) -> bytes:
    """A Messages event, named by its type."""
    return encode_frame(dumps(obj), obj["type"])


dialect = Anthropic()
