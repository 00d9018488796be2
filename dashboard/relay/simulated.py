"""The built-in simulated provider: an OpenAI-compatible upstream that needs no key and no network.

It is an httpx transport, so the relay reads it exactly as it reads a real provider: the same
request, the same SSE parsing (its frames are even cut at random places), the same timeouts. Given
tools, it calls one when asked to (see `_tool_call`), and then answers with what the tool returned,
so an agent loop can be tried without a key.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from dashboard.config import AISimulation
from dashboard.relay import dialects

MODEL = "simulated"
_ANSWER = (
    "This answer comes from the dashboard's built-in simulated provider: no key, no network, "
    "just a stream paced like a real model. You asked: \u201c{prompt}\u201d. To talk to a real model, add "
    "a provider under ai.providers in config.yaml with its base_url and an api_key read from the "
    "environment, such as ${{OPENAI_API_KEY}}; the key stays on the server. Every completion reports "
    "its time to first token, the relay's own overhead, tokens per second and, when prices are "
    "configured, its cost."
)


def _words(text: str) -> list[str]:
    """The answer as tokens: each word with its leading space, as models stream them."""
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _tool_call(body: dict[str, Any]) -> dict[str, str] | None:
    """The tool call the answer makes, if any: the tool named by `tool_choice`, else the first
    whose name the last user message mentions (or, with `tool_choice: required`, the first tool);
    none once the conversation ends with a tool's result. Its string arguments are the last word
    of that message ("weather in Paris?" -> "Paris"), numbers 1 and flags true."""
    messages, tools = body.get("messages") or [], body.get("tools") or []
    functions = [t["function"] for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if (
        not functions
        or not messages
        or messages[-1].get("role") != "user"
        or body.get("tool_choice") == "none"
    ):
        return None
    text, choice = _last_user_text(body), body.get("tool_choice")
    named = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    mentioned = [f for f in functions if f.get("name") and (f["name"] == named or f["name"] in text)]
    if not mentioned and choice == "required":
        mentioned = functions[:1]
    if not mentioned:
        return None
    function = mentioned[0]
    words = text.replace("?", " ").replace(".", " ").replace("!", " ").split()
    values = {"string": words[-1] if words else "", "integer": 1, "number": 1, "boolean": True}
    properties = (function.get("parameters") or {}).get("properties") or {}
    arguments = {
        k: values[p["type"]] for k, p in properties.items() if isinstance(p, dict) and p.get("type") in values
    }
    return {
        "id": f"call_sim_{uuid.uuid4().hex[:12]}",
        "name": function["name"],
        "arguments": json.dumps(arguments),
    }


def _tool_result_text(body: dict[str, Any]) -> str | None:
    """What the answer says when the conversation ends with tools' results: what they returned."""
    messages = body.get("messages") or []
    results = []
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "tool":
            break
        results.insert(0, str(message.get("content")))
    return f"The tool answered: {'; '.join(results)}." if results else None


def _answer(body: dict[str, Any]) -> tuple[list[str], str]:
    """The answer's tokens, cut to the request's `max_tokens` (or `max_completion_tokens`), and its
    finish reason: `length` when cut, else `stop`. Its usage counts what is returned, so a key is
    charged no more than it asked for."""
    text = _tool_result_text(body) or _ANSWER.format(prompt=_last_user_text(body)[:200])
    tokens = _words(text)
    limit = body.get("max_tokens") or body.get("max_completion_tokens")
    if type(limit) is int and 0 < limit < len(tokens):
        return tokens[:limit], "length"
    return tokens, "stop"


def _count_tokens(body: dict[str, Any]) -> int:
    text = " ".join(str(m.get("content", "")) for m in body.get("messages") or [] if isinstance(m, dict))
    return max(1, len(text.split()))


def _frame(obj: dict[str, Any] | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return f"data: {data}\n\n".encode()


class _Stream(httpx.AsyncByteStream):
    def __init__(self, body: dict[str, Any], pace: AISimulation) -> None:
        self.body = body
        self.pace = pace

    async def __aiter__(self) -> AsyncIterator[bytes]:
        body, pace = self.body, self.pace
        tokens, finish = _answer(body)
        base = {"id": f"chatcmpl-sim-{uuid.uuid4().hex[:16]}", "object": "chat.completion.chunk"}
        base |= {"created": int(time.time()), "model": MODEL, "system_fingerprint": "simulated"}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return _frame({**base, "choices": [choice]})

        await asyncio.sleep(pace.first_token_ms / 1000)
        yield chunk({"role": "assistant", "content": ""})
        call = _tool_call(body)
        if call is not None:
            tokens, finish = [], "tool_calls"
            first = {"index": 0, "id": call["id"], "type": "function"}
            yield chunk({"tool_calls": [{**first, "function": {"name": call["name"], "arguments": ""}}]})
            half = len(call["arguments"]) // 2
            for piece in (call["arguments"][:half], call["arguments"][half:]):
                yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        for token in tokens:
            frame = chunk({"content": token})
            cut = random.randrange(1, len(frame))  # as a network would: anywhere
            yield frame[:cut]
            yield frame[cut:]
            await asyncio.sleep(random.uniform(0.5, 1.5) / pace.tokens_per_s)
        yield chunk({}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            prompt_tokens = _count_tokens(body)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(tokens),
                "total_tokens": prompt_tokens + len(tokens),
            }
            yield _frame({**base, "choices": [], "usage": usage})
        yield _frame("[DONE]")


class SimulatedTransport(httpx.AsyncBaseTransport):
    """Serves POST /v1/chat/completions (streamed or not) and GET /v1/models in process."""

    def __init__(self, pace: AISimulation) -> None:
        self.pace = pace

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and path.endswith("/models"):
            model = {"id": MODEL, "object": "model", "created": 0, "owned_by": "simulated"}
            return httpx.Response(200, json={"object": "list", "data": [model]})
        if request.method != "POST" or not path.endswith("/chat/completions"):
            return _error(404, f"no route {request.method} {path}", "not_found")
        try:
            body = json.loads(await request.aread())
        except ValueError:
            return _error(400, "the body is not JSON", "invalid_json")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "messages must be a list", "invalid_request")
        if body.get("stream"):
            headers = {"content-type": "text/event-stream"}
            return httpx.Response(200, headers=headers, stream=_Stream(body, self.pace))
        return httpx.Response(200, json=await _completion(body, self.pace))


async def _completion(body: dict[str, Any], pace: AISimulation) -> dict[str, Any]:
    tokens, finish = _answer(body)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(tokens)}
    call = _tool_call(body)
    if call is not None:
        tokens, finish = [], "tool_calls"
        function = {"name": call["name"], "arguments": call["arguments"]}
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call["id"], "type": "function", "function": function}],
        }
    await asyncio.sleep(pace.first_token_ms / 1000 + len(tokens) / pace.tokens_per_s / 4)
    prompt_tokens = _count_tokens(body)
    return {
        "id": f"chatcmpl-sim-{uuid.uuid4().hex[:16]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        },
    }


def _error(status: int, message: str, code: str) -> httpx.Response:
    return httpx.Response(status, json=dialects.get("openai").error_body(status, message, code))
