"""OpenAI chat completions (`POST {base_url}/chat/completions`): the relay's common form."""

from __future__ import annotations

import time
from typing import Any

from dashboard.events import encode_frame, json_text
from dashboard.relay.dialects import Chunk, Completion, Dialect, Renderer, ToolCall, ToolDelta, string_end
from dashboard.relay.errors import RelayError
from dashboard.relay.sse import SSEEvent

_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}
DONE = encode_frame("[DONE]")
# Keys that make an event more than a plain token: it is then parsed in full.
_LEAN_EXCLUDES = ('"usage"', '"error"', '"role"', '"tool_calls"', '"reasoning', '"refusal"', '"choices":[]')
_NOT_PLAIN = tuple(key.encode() for key in _LEAN_EXCLUDES)


def dumps(obj: Any) -> str:
    return json_text(obj)


class OpenAI(Dialect):
    name = "openai"
    plain_text_key = b'"content":"'
    path = "/chat/completions"

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"}

    def upstream_body(
        self, body: dict[str, Any], source: Dialect, *, stream: bool, usage: bool
    ) -> dict[str, Any]:
        out = super().upstream_body(body, source, stream=stream, usage=usage)
        if stream and usage and not self.wants_usage(out):
            out["stream_options"] = {**(out.get("stream_options") or {}), "include_usage": True}
        return out

    def parse_event(self, event: SSEEvent, data: str, obj: dict[str, Any], state: dict) -> Chunk | None:
        chunk = Chunk(data, event.event, id=obj.get("id"), model=obj.get("model"))
        usage = obj.get("usage")
        if isinstance(usage, dict):
            chunk.usage = usage
        choices = obj.get("choices")
        if choices and isinstance(choices[0], dict):
            choice = choices[0]
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str):
                    chunk.text = content
                chunk.tools = _tool_deltas(delta.get("tool_calls"))
                chunk.token = bool(content or chunk.tools or delta.get("reasoning_content"))
                chunk.start = "role" in delta
            chunk.finish_reason = choice.get("finish_reason")
        elif chunk.usage is not None:
            chunk.usage_only = True
        return chunk

    def lean_event(self, event: SSEEvent, data: str) -> Chunk | None:
        # A key in quotes with its colon cannot occur inside a JSON string (its quotes would be
        # escaped there), so finding these is finding the keys themselves.
        if (
            event.event is not None
            or '"finish_reason":null' not in data
            or data.count('"content":"') != 1
            or any(key in data for key in _LEAN_EXCLUDES)
        ):
            return None
        chars = _content_length(data.encode(), 1)
        if chars is None:
            return None
        return Chunk(data, token='"content":""' not in data, chars=chars)

    def plain_events(self, events: bytes) -> tuple[int, int] | None:
        # As lean_event searches one event's text, over the bytes of all at once: each is one
        # `data: {` line, no key that needs parsing is there, and every finish_reason is null.
        # (Searched with `in` where it will do: the counting and finding methods cost more per call.)
        n = events.count(b"\n\n")
        if n == 1:  # the common case, one event
            if (
                events[:7] != b"data: {"
                or events[-3:] != b"}\n\n"  # a whole JSON object, as far as a glance can tell
                or 10 in events[7:-2]  # a line end (as an int: see forward.py)
                or b'"finish_reason":null' not in events
                or events.count(b'"finish_reason":') != 1
                or events.count(b'"content":"') != 1
            ):
                return None
        elif (
            events[:7] != b"data: {"
            or events.count(b"\n") != 2 * n
            or events.count(b"\n\ndata: {") != n - 1
            or events.count(b"}\n\n") != n
            or events.count(b'"finish_reason":') != n
            or events.count(b'"finish_reason":null') != n
            or events.count(b'"content":"') != n
        ):
            return None
        for key in _NOT_PLAIN:
            if key in events:
                return None
        chars = _content_length(events, n)
        if chars is None:
            return None
        return n - events.count(b'"content":""'), chars

    def parse_completion(self, obj: dict[str, Any]) -> Completion:
        choices = obj.get("choices")
        if not isinstance(choices, list):
            raise ValueError("no choices")
        choice = choices[0] if choices and isinstance(choices[0], dict) else {}
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        content = message.get("content")
        usage = obj.get("usage")
        return Completion(
            text=content if isinstance(content, str) else "",
            finish_reason=choice.get("finish_reason"),
            usage=usage if isinstance(usage, dict) else None,
            id=str(obj.get("id") or "chatcmpl-relay"),
            model=str(obj.get("model") or ""),
            tool_calls=[
                _tool_call(call) for call in message.get("tool_calls") or [] if isinstance(call, dict)
            ],
        )

    def wants_usage(self, body: dict[str, Any]) -> bool:
        options = body.get("stream_options")
        return isinstance(options, dict) and bool(options.get("include_usage"))

    def to_common(self, body: dict[str, Any]) -> dict[str, Any]:
        return body

    def from_common(self, body: dict[str, Any]) -> dict[str, Any]:
        return body

    def converter(self, *, usage: bool) -> Renderer:
        return ToOpenAI(usage=usage)

    def stream_tail(self) -> bytes:
        return DONE

    def completion_body(self, completion: Completion) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": completion.text}
        if completion.tool_calls:
            message["content"] = completion.text or None
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in completion.tool_calls
            ]
        body: dict[str, Any] = {
            "id": completion.id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": completion.model,
            "choices": [{"index": 0, "message": message, "finish_reason": completion.finish_reason}],
        }
        if completion.usage is not None:
            body["usage"] = completion.usage
        return body

    def error_body(self, status: int, message: str, code: str, type_: str | None = None) -> dict[str, Any]:
        """An error as the OpenAI SDKs read it: `{"error": {"message", "type", "param", "code"}}`."""
        if type_ is None:
            type_ = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        return {"error": {"message": message, "type": type_, "param": None, "code": code}}

    def error_frame(self, error: RelayError) -> bytes:
        return encode_frame(dumps(self.error_body(error.status, error.message, error.code, error.type)))


def _content_length(events: bytes, n: int) -> int | None:
    """The length of the `content` strings of `n` plain events as written (escapes too): what
    metering estimates the answer's tokens from when no usage comes. None when one of them does not
    end (its closing quote escaped): not JSON, for the parser to say so."""
    total = at = 0
    for _ in range(n):
        start = events.find(b'"content":"', at) + 11
        end = string_end(events, start)
        if end < 0:
            return None
        total += end - start
        at = end
    return total


def _tool_deltas(calls: Any) -> list[ToolDelta] | None:
    """The pieces of tool calls in a streamed delta's `tool_calls`."""
    if not isinstance(calls, list):
        return None
    out = []
    for call in calls:
        if isinstance(call, dict) and type(call.get("index")) is int:
            function = call.get("function") if isinstance(call.get("function"), dict) else {}
            arguments = function.get("arguments")
            out.append(
                ToolDelta(
                    call["index"],
                    call.get("id"),
                    function.get("name"),
                    arguments if isinstance(arguments, str) else "",
                )
            )
    return out or None


def _tool_call(call: dict[str, Any]) -> ToolCall:
    function = call.get("function") if isinstance(call.get("function"), dict) else {}
    arguments = function.get("arguments")
    return ToolCall(str(call.get("id") or ""), str(function.get("name") or ""), str(arguments or "{}"))


class ToOpenAI(Renderer):
    """A stream from a provider of another dialect, as chat.completion.chunk events."""

    def __init__(self, *, usage: bool) -> None:
        self.usage = usage
        self.id = "chatcmpl-relay"
        self.model = ""
        self.created = int(time.time())
        self.last_usage: dict[str, Any] | None = None
        self.calls: dict[int, int] = {}  # the provider's index of each tool call -> its OpenAI index
        self.quiet: set[int] = set()  # calls whose arguments have not begun yet

    def _frame(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return encode_frame(dumps({**self._base(), "choices": [choice]}))

    def _base(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }

    def frames(self, chunks: list[Chunk]) -> bytes:
        out: list[bytes] = []
        for c in chunks:
            if c.id:
                self.id = c.id
            if c.model:
                self.model = c.model
            if c.usage is not None:
                self.last_usage = c.usage
            if c.start:
                out.append(self._frame({"role": "assistant", "content": ""}))
            if c.text:
                out.append(self._frame({"content": c.text}))
            for tool in c.tools or ():
                out.append(self._frame({"tool_calls": [self._tool_call(tool)]}))
            if c.finish_reason:
                # A call streamed without arguments (a tool that takes none) still gets valid JSON.
                for n in sorted(self.quiet):
                    out.append(self._frame({"tool_calls": [{"index": n, "function": {"arguments": "{}"}}]}))
                self.quiet.clear()
                out.append(self._frame({}, c.finish_reason))
        return b"".join(out)

    def _tool_call(self, tool: ToolDelta) -> dict[str, Any]:
        """A tool call's piece as an entry of OpenAI's `delta.tool_calls`: the first with its id,
        type and name."""
        function: dict[str, Any] = {"arguments": tool.arguments}
        if tool.index not in self.calls:
            self.calls[tool.index] = n = len(self.calls)
            self.quiet.add(n)
            function["name"] = tool.name or ""
            call: dict[str, Any] = {"index": n, "id": tool.id or f"call_{n}", "type": "function"}
        else:
            call = {"index": self.calls[tool.index]}
        if tool.arguments:
            self.quiet.discard(call["index"])
        return {**call, "function": function}

    def end(self) -> bytes:
        if self.usage and self.last_usage is not None:
            return encode_frame(dumps({**self._base(), "choices": [], "usage": self.last_usage})) + DONE
        return DONE

    def error(self, error: RelayError) -> bytes:
        return dialect.error_frame(error)


dialect = OpenAI()
