"""Anthropic Messages (`POST {base_url}/messages`, `x-api-key`, `anthropic-version`)."""

from __future__ import annotations

from typing import Any

from dashboard.events import encode_frame
from dashboard.relay.dialects import Chunk, Completion, Dialect, Renderer, usage
from dashboard.relay.dialects.openai import dumps
from dashboard.relay.errors import RelayError
from dashboard.relay.sse import SSEEvent

VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # Messages requires max_tokens; an OpenAI-shaped request may leave it out
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
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


def _anthropic_usage(u: dict[str, int] | None) -> dict[str, int]:
    u = u or {}
    return {"input_tokens": u.get("prompt_tokens", 0), "output_tokens": u.get("completion_tokens", 0)}


class Anthropic(Dialect):
    name = "anthropic"
    path = "/messages"

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key, "anthropic-version": VERSION}

    def parse_event(self, event: SSEEvent, data: str, obj: dict[str, Any], state: dict) -> Chunk | None:
        kind = obj.get("type") or event.event
        if kind == "ping":
            return None
        chunk = Chunk(data, event.event or kind)
        if kind == "content_block_delta":
            delta = obj.get("delta") or {}
            if delta.get("type") == "text_delta":
                chunk.text = str(delta.get("text") or "")
            chunk.token = bool(chunk.text or delta.get("partial_json") or delta.get("thinking"))
        elif kind == "message_start":
            message = obj.get("message") or {}
            chunk.start, chunk.id, chunk.model = True, message.get("id"), message.get("model")
            counts = message.get("usage") or {}
            state["input"] = counts.get("input_tokens") or 0
            chunk.usage = usage(state["input"], counts.get("output_tokens") or 0)
        elif kind == "message_delta":
            reason = (obj.get("delta") or {}).get("stop_reason")
            chunk.finish_reason = _FINISH.get(reason, reason)
            counts = obj.get("usage") or {}
            prompt = counts.get("input_tokens") or state.get("input", 0)
            chunk.usage = usage(prompt, counts.get("output_tokens") or 0)
        elif kind == "message_stop":
            chunk.last = True
        return chunk

    def parse_completion(self, obj: dict[str, Any]) -> Completion:
        if obj.get("type") != "message" or not isinstance(obj.get("content"), list):
            raise ValueError("not a message")
        counts = obj.get("usage") or {}
        reason = obj.get("stop_reason")
        return Completion(
            text=_text(obj["content"]),
            finish_reason=_FINISH.get(reason, reason),
            usage=usage(counts.get("input_tokens") or 0, counts.get("output_tokens") or 0),
            id=str(obj.get("id") or "msg_relay"),
            model=str(obj.get("model") or ""),
        )

    def wants_usage(self, body: dict[str, Any]) -> bool:
        return True  # every Messages stream carries its token counts

    def to_common(self, body: dict[str, Any]) -> dict[str, Any]:
        messages: list[dict[str, Any]] = []
        if body.get("system"):
            messages.append({"role": "system", "content": _text(body["system"])})
        for m in body["messages"]:
            content = m.get("content")
            if isinstance(content, list) and all(_is_text(b) for b in content):
                content = _text(content)
            messages.append({"role": m.get("role"), "content": content})
        out: dict[str, Any] = {"model": body["model"], "messages": messages, "max_tokens": body["max_tokens"]}
        for key in ("temperature", "top_p"):
            if key in body:
                out[key] = body[key]
        if body.get("stop_sequences"):
            out["stop"] = body["stop_sequences"]
        return out

    def from_common(self, body: dict[str, Any]) -> dict[str, Any]:
        roles = ("system", "developer")
        system = [_text(m.get("content")) for m in body["messages"] if m.get("role") in roles]
        messages = [
            {"role": "assistant" if m.get("role") == "assistant" else "user", "content": m.get("content")}
            for m in body["messages"]
            if m.get("role") not in roles
        ]
        limit = body.get("max_tokens") or body.get("max_completion_tokens") or DEFAULT_MAX_TOKENS
        out: dict[str, Any] = {"model": body["model"], "messages": messages, "max_tokens": limit}
        if system:
            out["system"] = "\n\n".join(system)
        for key in ("temperature", "top_p"):
            if body.get(key) is not None:
                out[key] = body[key]
        stop = body.get("stop")
        if stop:
            out["stop_sequences"] = [stop] if isinstance(stop, str) else stop
        return out

    def converter(self, *, usage: bool) -> Renderer:
        return ToAnthropic()

    def completion_body(self, completion: Completion) -> dict[str, Any]:
        return {
            "id": completion.id,
            "type": "message",
            "role": "assistant",
            "model": completion.model,
            "content": [{"type": "text", "text": completion.text}],
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


class ToAnthropic(Renderer):
    """A stream from a provider of another dialect, as Messages events."""

    def __init__(self) -> None:
        self.id = "msg_relay"
        self.model = ""
        self.started = False
        self.block = False
        self.finish_reason: str | None = None
        self.usage: dict[str, int] | None = None

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
        return encode_frame(dumps({"type": "message_start", "message": message}), "message_start")

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
                if not self.block:
                    self.block = True
                    block = {"type": "text", "text": ""}
                    start = {"type": "content_block_start", "index": 0, "content_block": block}
                    out.append(encode_frame(dumps(start), "content_block_start"))
                text = {"type": "text_delta", "text": c.text}
                delta = {"type": "content_block_delta", "index": 0, "delta": text}
                out.append(encode_frame(dumps(delta), "content_block_delta"))
        return b"".join(out)

    def end(self) -> bytes:
        out = [] if self.started else [self._start()]
        if self.block:
            out.append(encode_frame(dumps({"type": "content_block_stop", "index": 0}), "content_block_stop"))
        reason = _STOP.get(self.finish_reason or "", self.finish_reason)
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": _anthropic_usage(self.usage),
        }
        out.append(encode_frame(dumps(delta), "message_delta"))
        out.append(encode_frame(dumps({"type": "message_stop"}), "message_stop"))
        return b"".join(out)

    def error(self, error: RelayError) -> bytes:
        return dialect.error_frame(error)


dialect = Anthropic()
