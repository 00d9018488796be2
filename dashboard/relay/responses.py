"""The OpenAI Responses API (`POST /v1/responses`) as a client speaks it. Its requests are translated
to chat completions, the relay's common form, so any provider of any dialect answers them; answers
come back as a Response object or its stream of semantic events. The relay keeps no responses:
`previous_response_id` and `store: true` are refused. One `Responses` is made per request, as the
Response object repeats the request's settings."""

from __future__ import annotations

import time
import uuid
from typing import Any

from dashboard.errors import HTTPError
from dashboard.events import encode_frame
from dashboard.relay import dialects
from dashboard.relay.dialects import Chunk, Completion, Dialect, Renderer, ToolDelta, cached_tokens
from dashboard.relay.dialects.openai import dumps
from dashboard.relay.errors import RelayError, Untranslatable, UpstreamProtocolError

OPENAI = dialects.get("openai")
# Settings that mean nothing more than their default here; any other value is refused.
_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "store": (False, None),
    "background": (False, None),
    "truncation": ("disabled", None),
    "include": ([], None),
    "reasoning": (None,),
}
_STATEFUL = ("previous_response_id", "conversation")
_TAKEN = {"model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "stream"}
_TAKEN |= {"tools", "tool_choice", "parallel_tool_calls", "user", "metadata", "text"} | set(_DEFAULTS)
_ECHOED = ("instructions", "max_output_tokens", "temperature", "top_p", "tool_choice", "tools", "user")
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


class Responses(Dialect):
    """A client of the Responses API: `request` is its body (checked when made)."""

    name = "responses"

    def __init__(self, request: dict[str, Any]) -> None:
        _check(request)
        self.request = request
        self.id = f"resp_{uuid.uuid4().hex}"
        self.created = int(time.time())

    # -- the request -----------------------------------------------------------------------------
    def to_common(self, body: dict[str, Any]) -> dict[str, Any]:
        """The request as chat completions."""
        messages: list[dict[str, Any]] = []
        if body.get("instructions"):
            messages.append({"role": "system", "content": body["instructions"]})
        items = body["input"]
        for item in [{"role": "user", "content": items}] if isinstance(items, str) else items:
            _add_item(messages, item)
        out: dict[str, Any] = {"model": body["model"], "messages": messages}
        if body.get("max_output_tokens") is not None:
            out["max_completion_tokens"] = body["max_output_tokens"]
        for key in ("temperature", "top_p", "user", "stream"):
            if body.get(key) is not None:
                out[key] = body[key]
        if body.get("tools"):
            out["tools"] = [_chat_tool(tool) for tool in body["tools"]]
            if body.get("parallel_tool_calls") is not None:  # chat completions takes it with tools only
                out["parallel_tool_calls"] = body["parallel_tool_calls"]
        if body.get("tool_choice") is not None:
            out["tool_choice"] = _chat_tool_choice(body["tool_choice"])
        response_format = _response_format((body.get("text") or {}).get("format"))
        if response_format is not None:
            out["response_format"] = response_format
        return out

    def wants_usage(self, body: dict[str, Any]) -> bool:
        return True  # a Response always carries its usage

    # -- the answer ------------------------------------------------------------------------------
    def renderer(self, source: Dialect, *, usage: bool) -> Renderer:
        return ResponseEvents(self)

    def completion_body(self, completion: Completion) -> dict[str, Any]:
        output: list[dict[str, Any]] = []
        if completion.text or not completion.tool_calls:
            output.append(message_item(f"msg_{uuid.uuid4().hex}", completion.text, "completed"))
        for n, call in enumerate(completion.tool_calls):
            item = function_item(f"fc_{n}_{self.id[5:]}", call.id, call.name, "completed")
            output.append({**item, "arguments": call.arguments or "{}"})
        return self.response(completion.finish_reason, output, completion.usage, completion.model)

    def response(
        self,
        finish_reason: str | None,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None,
        model: str,
        *,
        status: str | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The Response object: its output and usage, and the request's settings repeated."""
        incomplete = _INCOMPLETE.get(finish_reason or "")
        request = self.request
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status or ("incomplete" if incomplete else "completed"),
            "model": model or request["model"],
            "output": output,
            "usage": _usage(usage),
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "metadata": request.get("metadata") or {},
            "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "previous_response_id": None,
            "store": False,
            "text": request.get("text") or {"format": {"type": "text"}},
            "truncation": "disabled",
        }
        for key in _ECHOED:
            body[key] = request.get(key)
        body["tool_choice"] = body["tool_choice"] or "auto"
        body["tools"] = body["tools"] or []
        return body

    def error_body(self, status: int, message: str, code: str, type_: str | None = None) -> dict[str, Any]:
        return OPENAI.error_body(status, message, code, type_)


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def function_item(item_id: str, call_id: str, name: str, status: str) -> dict[str, Any]:
    item = {"id": item_id, "type": "function_call", "call_id": call_id, "name": name}
    return {**item, "arguments": "", "status": status}


def _usage(counts: dict[str, Any] | None) -> dict[str, Any] | None:
    if counts is None:
        return None
    prompt, completion = counts.get("prompt_tokens", 0), counts.get("completion_tokens", 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached_tokens(counts)},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


# -- checking and translating the request --------------------------------------------------------
def _check(request: dict[str, Any]) -> None:
    """Refuses what is malformed (HTTPError 400) and what the relay cannot do (Untranslatable)."""
    if not isinstance(request.get("model"), str) or not request["model"]:
        raise HTTPError(400, "'model' is required and must be a string", "invalid_request")
    items = request.get("input")
    if not (isinstance(items, str) and items) and not (
        isinstance(items, list) and items and all(isinstance(i, dict) for i in items)
    ):
        raise HTTPError(400, "'input' is required: a string or a non-empty list of items", "invalid_request")
    for key in _STATEFUL:
        if request.get(key) is not None:
            raise Untranslatable(key, "needs responses stored by the server, and the relay stores none")
    if request.get("store"):
        why = "is true, and the relay stores no responses: send the whole conversation as input"
        raise Untranslatable("store", why)
    extra = sorted(set(request) - _TAKEN)
    if extra:
        raise Untranslatable(extra[0], "is not supported by the relay's Responses API")
    for key, allowed in _DEFAULTS.items():
        if key in request and request[key] not in allowed:
            raise Untranslatable(key, f"is {request[key]!r}, which the relay's Responses API cannot do")
    text = request.get("text")
    if isinstance(text, dict) and set(text) - {"format"}:
        raise Untranslatable(
            f"text.{min(set(text) - {'format'})}", "is not supported by the relay's Responses API"
        )
    if "stream" in request and not isinstance(request["stream"], bool):
        raise HTTPError(400, "'stream' must be true or false", "invalid_request")


def _add_item(messages: list[dict[str, Any]], item: dict[str, Any]) -> None:
    """One input item as chat messages: a function call joins the assistant turn before it."""
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise HTTPError(400, f"an input message's role cannot be {role!r}", "invalid_request")
        messages.append({"role": role, "content": _content(item.get("content"))})
    elif kind == "function_call":
        call = {"id": item.get("call_id"), "type": "function"}
        call["function"] = {"name": item.get("name"), "arguments": item.get("arguments") or "{}"}
        if messages and messages[-1]["role"] == "assistant":
            messages[-1].setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        text = output if isinstance(output, str) else _text_only(_content(output), "function_call_output")
        messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
    else:
        raise Untranslatable("input", f"holds a {kind!r} item, which the relay's Responses API cannot take")


def _content(content: Any) -> str | list[dict[str, Any]]:
    """A message's content as chat content: a string, or parts (text and images)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise HTTPError(400, "a message's content must be a string or a list of parts", "invalid_request")
    parts = [_part(part) for part in content]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _part(part: Any) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": str(part.get("text", ""))}
    if kind == "input_image" and part.get("image_url"):
        image = {"url": part["image_url"]}
        if part.get("detail", "auto") != "auto":
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    raise Untranslatable(
        "input", f"holds a {kind!r} content part, which the relay's Responses API cannot take"
    )


def _text_only(content: str | list[dict[str, Any]], where: str) -> str:
    if isinstance(content, str):
        return content
    raise Untranslatable(where, "holds an image, which a tool result cannot carry in chat completions")


def _chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else tool
        raise Untranslatable("tools", f"holds a {kind!r} tool: the relay translates function tools only")
    function = {key: tool[key] for key in ("name", "description", "parameters", "strict") if key in tool}
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise Untranslatable("tool_choice", f"{choice!r} is not supported by the relay's Responses API")


def _response_format(form: Any) -> dict[str, Any] | None:
    """`text.format` as chat completions' `response_format` (None: plain text)."""
    if form is None or form == {"type": "text"}:
        return None
    if isinstance(form, dict) and form.get("type") == "json_object":
        return {"type": "json_object"}
    if isinstance(form, dict) and form.get("type") == "json_schema":
        schema = {key: form[key] for key in ("name", "schema", "strict", "description") if key in form}
        return {"type": "json_schema", "json_schema": schema}
    raise Untranslatable("text.format", f"{form!r} is not supported by the relay's Responses API")


# -- the streamed answer -------------------------------------------------------------------------
class ResponseEvents(Renderer):
    """A stream of any provider as the Responses API's semantic events: response.created, then an
    output item for the text and one for each tool call (added, deltas, done), then
    response.completed (or response.incomplete); a failure is an `error` then response.failed."""

    def __init__(self, client: Responses) -> None:
        self.client = client
        self.sequence = 0
        self.started = False
        self.model = ""
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.output: list[dict[str, Any]] = []  # items done
        self.item: dict[str, Any] | None = None  # the item being streamed
        self.call: int | None = None  # the provider's index of the tool call being streamed

    def _event(self, kind: str, **fields: Any) -> bytes:
        self.sequence += 1
        return encode_frame(dumps({"type": kind, "sequence_number": self.sequence - 1, **fields}), kind)

    def _response(self, status: str, output: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return self.client.response(
            self.finish_reason, output, self.usage, self.model, status=status, **extra
        )

    def _start(self) -> bytes:
        self.started = True
        response = self.client.response(None, [], None, self.model, status="in_progress")
        created = self._event("response.created", response=response)
        return created + self._event("response.in_progress", response=response)

    def frames(self, chunks: list[Chunk]) -> bytes:
        out: list[bytes] = []
        for c in chunks:
            self.model = c.model or self.model
            self.usage = c.usage if c.usage is not None else self.usage
            self.finish_reason = c.finish_reason or self.finish_reason
            if not self.started:
                out.append(self._start())
            if c.text:
                out.append(self._text(c.text))
            for tool in c.tools or ():
                out.append(self._tool(tool))
        return b"".join(out)

    def _text(self, text: str) -> bytes:
        out = b""
        if self.item is None or self.item["type"] != "message":
            out = self._close()
            self.item = message_item(f"msg_{uuid.uuid4().hex}", "", "in_progress")
            part = self.item["content"][0]
            self.item["content"] = []
            out += self._event("response.output_item.added", output_index=len(self.output), item=self.item)
            out += self._event("response.content_part.added", **self._where(0), part=part)
            self.item["content"] = [part]
        self.item["content"][0]["text"] += text
        return out + self._event("response.output_text.delta", **self._where(0), delta=text, logprobs=[])

    def _tool(self, tool: ToolDelta) -> bytes:
        out = b""
        if self.item is None or tool.index != self.call:
            if tool.id is None and tool.name is None:
                raise UpstreamProtocolError("the provider interleaved the arguments of parallel tool calls")
            out = self._close()
            n = len(self.output)
            item_id = f"fc_{n}_{self.client.id[5:]}"
            self.item = function_item(item_id, tool.id or f"call_{n}", tool.name or "", "in_progress")
            self.call = tool.index
            out += self._event("response.output_item.added", output_index=n, item=dict(self.item))
        if tool.arguments:
            self.item["arguments"] += tool.arguments
            out += self._event(
                "response.function_call_arguments.delta", **self._where(), delta=tool.arguments
            )
        return out

    def _where(self, content_index: int | None = None) -> dict[str, Any]:
        assert self.item is not None
        where = {"item_id": self.item["id"], "output_index": len(self.output)}
        return where if content_index is None else {**where, "content_index": content_index}

    def _close(self) -> bytes:
        """Ends the item being streamed."""
        item, out = self.item, b""
        if item is None:
            return out
        if item["type"] == "message":
            part = item["content"][0]
            out += self._event("response.output_text.done", **self._where(0), text=part["text"], logprobs=[])
            out += self._event("response.content_part.done", **self._where(0), part=part)
        else:
            item["arguments"] = item["arguments"] or "{}"
            done = {"arguments": item["arguments"], "name": item["name"]}
            out += self._event("response.function_call_arguments.done", **self._where(), **done)
        item["status"] = "completed"
        out += self._event("response.output_item.done", output_index=len(self.output), item=item)
        self.output.append(item)
        self.item = self.call = None
        return out

    def end(self) -> bytes:
        out = b"" if self.started else self._start()
        out += self._close()
        status = "incomplete" if _INCOMPLETE.get(self.finish_reason or "") else "completed"
        return out + self._event(f"response.{status}", response=self._response(status, self.output))

    def error(self, error: RelayError) -> bytes:
        out = b"" if self.started else self._start()
        out += self._event("error", code=error.code, message=error.message, param=None)
        failure = {"code": error.code, "message": error.message}
        return out + self._event(
            "response.failed", response=self._response("failed", self.output, error=failure)
        )
