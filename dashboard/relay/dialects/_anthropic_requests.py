"""Requests between OpenAI chat completions (the relay's common form) and Anthropic Messages, both
ways: messages, system prompts, tools and tool choice, tool calls and their results, images and the
sampling parameters. What has no faithful equivalent is refused (`Untranslatable`), never dropped;
docs/DIALECTS.md has the table."""

from __future__ import annotations

import json
from typing import Any

from dashboard.relay.errors import Untranslatable

DEFAULT_MAX_TOKENS = 4096  # Messages requires max_tokens; an OpenAI-shaped request may leave it out
_ERROR_PREFIX = "Error: "  # a failed tool's result, in words: chat completions has no flag for it

# Chat completions parameters that mean nothing more than their default; any other value is refused.
_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "n": (1, None),
    "logprobs": (False, None),
    "presence_penalty": (0, None),
    "frequency_penalty": (0, None),
    "store": (False, None),
    "parallel_tool_calls": (True, False, None),  # False is translated
}
_TO_MESSAGES = {"model", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options"}
_TO_MESSAGES |= {"temperature", "top_p", "stop", "tools", "tool_choice", "user", "response_format"}
_TO_MESSAGES |= set(_DEFAULTS)
_TO_CHAT = {"model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream"}
_TO_CHAT |= {"temperature", "top_p", "tools", "tool_choice"}


# -- Messages -> chat completions ----------------------------------------------------------------
def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A Messages request as a chat completions request."""
    _only(body, _TO_CHAT, "has no equivalent at an OpenAI-type provider")
    messages: list[dict[str, Any]] = []
    if body.get("system"):
        messages.append({"role": "system", "content": _system_text(body["system"])})
    for message in body["messages"]:
        messages.extend(_chat_messages(message))
    out: dict[str, Any] = {"model": body["model"], "messages": messages, "max_tokens": body["max_tokens"]}
    for key in ("temperature", "top_p"):
        if key in body:
            out[key] = body[key]
    if body.get("stop_sequences"):
        out["stop"] = body["stop_sequences"]
    metadata = body.get("metadata") or {}
    _only(metadata, {"user_id"}, "has no equivalent in chat completions", within="metadata")
    if metadata.get("user_id"):
        out["user"] = metadata["user_id"]
    if body.get("tools"):
        out["tools"] = [_chat_tool(tool) for tool in body["tools"]]
    if body.get("tool_choice"):
        out.update(_chat_tool_choice(body["tool_choice"]))
    return out


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    return "".join(_block_text(block, "system") for block in system)


def _block_text(block: Any, where: str) -> str:
    if not isinstance(block, dict) or block.get("type") != "text":
        kind = block.get("type") if isinstance(block, dict) else type(block).__name__
        raise Untranslatable(where, f"holds a {kind!r} block, which can only be text here")
    return str(block.get("text", ""))


def _chat_messages(message: dict[str, Any]) -> list[dict[str, Any]]:
    """One Messages turn as chat messages: a user turn's tool results become `tool` messages
    (ahead of whatever else it says), an assistant turn's tool_use blocks its `tool_calls`."""
    role, content = message.get("role"), message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    blocks = content if isinstance(content, list) else []
    if role == "assistant":
        text = "".join(_block_text(b, "assistant content") for b in blocks if b.get("type") != "tool_use")
        calls = [_chat_tool_call(b) for b in blocks if b.get("type") == "tool_use"]
        out: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
        if calls:
            out["tool_calls"] = calls
        return [out]
    results = [_tool_message(b) for b in blocks if b.get("type") == "tool_result"]
    parts = [_chat_part(b) for b in blocks if b.get("type") != "tool_result"]
    if parts and all(p["type"] == "text" for p in parts):
        return [*results, {"role": role, "content": "".join(p["text"] for p in parts)}]
    return [*results, *([{"role": role, "content": parts}] if parts else [])]


def _chat_tool_call(block: dict[str, Any]) -> dict[str, Any]:
    arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
    return {
        "id": block.get("id"),
        "type": "function",
        "function": {"name": block.get("name"), "arguments": arguments},
    }


def _tool_message(block: dict[str, Any]) -> dict[str, Any]:
    content = block.get("content")
    text = (
        content if isinstance(content, str) else "".join(_block_text(b, "tool_result") for b in content or [])
    )
    if block.get("is_error"):
        text = _ERROR_PREFIX + text
    return {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}


def _chat_part(block: dict[str, Any]) -> dict[str, Any]:
    if block.get("type") == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type')};base64,{source.get('data')}"
        elif source.get("type") == "url":
            url = source.get("url")
        else:
            raise Untranslatable(
                "image", f"source {source.get('type')!r} has no equivalent in chat completions"
            )
        return {"type": "image_url", "image_url": {"url": url}}
    return {"type": "text", "text": _block_text(block, "user content")}


def _chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") not in (None, "custom"):
        raise Untranslatable("tools", f"holds a {tool['type']!r} tool (server tools exist only at Anthropic)")
    allowed = {"name", "description", "input_schema", "type", "cache_control"}  # caching: a hint
    _only(tool, allowed, "has no equivalent at an OpenAI-type provider", within="tools")
    function = {"name": tool.get("name"), "parameters": tool.get("input_schema") or {"type": "object"}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: dict[str, Any]) -> dict[str, Any]:
    kind = choice.get("type")
    named = {"type": "function", "function": {"name": choice.get("name")}}
    words: dict[str, Any] = {"auto": "auto", "any": "required", "none": "none", "tool": named}
    if kind not in words:
        raise Untranslatable("tool_choice", f"of type {kind!r} has no equivalent")
    out: dict[str, Any] = {"tool_choice": words[kind]}
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False
    return out


# -- chat completions -> Messages ----------------------------------------------------------------
def to_messages(body: dict[str, Any]) -> dict[str, Any]:
    """A chat completions request as a Messages request."""
    _only(body, _TO_MESSAGES, "has no equivalent at an Anthropic-type provider")
    for key, allowed in _DEFAULTS.items():
        if key in body and body[key] not in allowed:
            raise Untranslatable(key, f"is {body[key]!r}, which an Anthropic-type provider cannot take")
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        kind = response_format.get("type") if isinstance(response_format, dict) else response_format
        raise Untranslatable("response_format", f"is {kind!r}, which an Anthropic-type provider cannot take")
    roles = ("system", "developer")
    system = [
        _joined_text(m["content"], "a system message") for m in body["messages"] if m.get("role") in roles
    ]
    messages: list[dict[str, Any]] = []
    for message in body["messages"]:
        if message.get("role") not in roles:
            _append_turn(messages, _messages_turn(message))
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
    if body.get("user"):
        out["metadata"] = {"user_id": body["user"]}
    if body.get("tools"):
        out["tools"] = [_messages_tool(tool) for tool in body["tools"]]
    choice = _messages_tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and body.get("tools"):
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        out["tool_choice"] = choice
    return out


def _joined_text(content: Any, where: str) -> str:
    """A message's content as text: a string, or text parts (others are refused)."""
    if isinstance(content, str):
        return content
    return "".join(_part_text(part, where) for part in content or [])


def _part_text(part: Any, where: str) -> str:
    if not isinstance(part, dict) or part.get("type") != "text":
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        raise Untranslatable(
            "messages", f"holds {where} with a {kind!r} part: only text can be translated there"
        )
    return str(part.get("text", ""))


def _messages_turn(message: dict[str, Any]) -> dict[str, Any]:
    role, content = message.get("role"), message.get("content")
    extra = set(message) - {"role", "content", "tool_calls", "tool_call_id", "refusal"}
    if extra:
        raise Untranslatable(
            f"messages[].{sorted(extra)[0]}", "has no equivalent at an Anthropic-type provider"
        )
    if role == "tool":
        text = (
            content if isinstance(content, str) else "".join(_part_text(p, "a tool message") for p in content)
        )
        result = {"type": "tool_result", "tool_use_id": message.get("tool_call_id"), "content": text}
        return {"role": "user", "content": [result]}
    if role == "assistant":
        blocks: list[dict[str, Any]] = []
        text = (
            content
            if isinstance(content, str)
            else "".join(_part_text(p, "an assistant message") for p in content or [])
        )
        if text:
            blocks.append({"type": "text", "text": text})
        blocks += [_tool_use(call) for call in message.get("tool_calls") or []]
        if not message.get("tool_calls"):
            return {"role": "assistant", "content": text}
        return {"role": "assistant", "content": blocks}
    if role != "user":
        raise Untranslatable("messages", f"holds role {role!r}, which an Anthropic-type provider cannot take")
    if isinstance(content, str):
        return {"role": "user", "content": content}
    return {"role": "user", "content": [_messages_block(part) for part in content or []]}


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except ValueError:
        raise Untranslatable(
            "tool_calls", "has arguments that are not JSON, which Messages requires"
        ) from None
    return {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments}


def _messages_block(part: dict[str, Any]) -> dict[str, Any]:
    if part.get("type") == "image_url":
        image = part.get("image_url") or {}
        if image.get("detail", "auto") != "auto":
            raise Untranslatable("image_url.detail", "has no equivalent at an Anthropic-type provider")
        url = str(image.get("url", ""))
        if url.startswith("data:"):
            head, _, data = url.partition(",")
            media_type, _, encoding = head[5:].partition(";")
            if encoding != "base64":
                raise Untranslatable("image_url", "is a data URL that is not base64, which Messages requires")
            return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
        return {"type": "image", "source": {"type": "url", "url": url}}
    return {"type": "text", "text": _part_text(part, "a user message")}


def _append_turn(messages: list[dict[str, Any]], turn: dict[str, Any]) -> None:
    """Adds a turn, merged into the one before when it has the same role: Messages alternates, and
    a run of tool results answers one assistant turn."""
    if messages and messages[-1]["role"] == turn["role"]:
        previous = messages[-1]
        previous["content"] = _blocks(previous["content"]) + _blocks(turn["content"])
    else:
        messages.append(turn)


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _messages_tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise Untranslatable("tools", f"holds a {tool.get('type')!r} tool: only functions can be translated")
    function = tool.get("function") or {}
    if function.get("strict"):
        raise Untranslatable("tools[].function.strict", "has no equivalent at an Anthropic-type provider")
    out = {"name": function.get("name"), "input_schema": function.get("parameters") or {"type": "object"}}
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _messages_tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    words = {"auto": "auto", "required": "any", "none": "none"}
    if isinstance(choice, str) and choice in words:
        return {"type": words[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    raise Untranslatable("tool_choice", f"{choice!r} has no equivalent at an Anthropic-type provider")


def _only(obj: dict[str, Any], allowed: set[str], why: str, *, within: str = "") -> None:
    """Refuses the first key of `obj` that is not `allowed`."""
    extra = sorted(set(obj) - allowed)
    if extra:
        raise Untranslatable(f"{within}.{extra[0]}" if within else extra[0], why)
