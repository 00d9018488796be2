"""A scripted upstream on a loopback port speaking both dialects, for the relay tests.

It speaks raw HTTP/1.1 over asyncio streams (in a thread), so each test can choose exactly which
bytes go out and how: one byte per write, CRLF, keepalive comments, multi-line events, errors
mid-stream, resets, hangs. The scenario is the request's model name after its first `-`; the first
path segment names the provider (`/a/v1/...`, `/b/v1/...`); the path's end the dialect: OpenAI
chat completions (`.../chat/completions`) or Anthropic Messages (`.../messages`). Every request is
recorded, with when its connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

WORDS = ["Hello", " from", " the", " loopback", " upstream", "."]


@dataclass
class Seen:
    """One request the upstream received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    opened: float = field(default_factory=time.monotonic)
    closed: float | None = None

    @property
    def provider(self) -> str:
        return self.path.strip("/").split("/")[0]

    @property
    def model(self) -> str:
        return self.body.get("model", "") if isinstance(self.body, dict) else ""


def chunk(text: str | None = None, *, finish: str | None = None, role: bool = False) -> dict:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if text is not None:
        delta["content"] = text
    return {
        "id": "chatcmpl-up",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def frame(obj: Any, eol: str = "\n", *, multiline: bool = False, escape_non_ascii: bool = True) -> bytes:
    """One event; an Anthropic one (a dict with a `type`) is named by it. `multiline`: the JSON is
    spread over one `data:` line per line, as SSE allows; `escape_non_ascii=False`: text is written
    as UTF-8, not as \\u escapes."""
    # Compact, as the providers write it (and as the relay's fast path recognises plain tokens)
    separators = None if multiline else (",", ":")
    data = (
        obj
        if isinstance(obj, str)
        else json.dumps(
            obj, indent=1 if multiline else None, separators=separators, ensure_ascii=escape_non_ascii
        )
    )
    named = f"event: {obj['type']}{eol}" if isinstance(obj, dict) and "type" in obj else ""
    return (named + "".join(f"data: {line}{eol}" for line in data.split("\n")) + eol).encode()


def message_event(kind: str, **fields: Any) -> dict:
    return {"type": kind, **fields}


def text_delta(text: str) -> dict:
    return message_event("content_block_delta", index=0, delta={"type": "text_delta", "text": text})


def message_start() -> dict:
    message = {"id": "msg_up", "type": "message", "role": "assistant", "content": [], "model": "up"}
    message |= {"stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 11, "output_tokens": 1}}
    return message_event("message_start", message=message)


def answer_events(provider: str, body: dict, *, anthropic: bool, words: list[str] = WORDS) -> list[Any]:
    """A complete, well-formed answer: the start, the words (first tagged with the provider), the
    finish, usage (OpenAI: when asked for), the end."""
    tagged = [f"[{provider}] {word}" if i == 0 else word for i, word in enumerate(words)]
    if anthropic:
        block = {"type": "text", "text": ""}
        usage = {"output_tokens": len(words)}
        stop = {"stop_reason": "end_turn", "stop_sequence": None}
        return [
            message_start(),
            message_event("content_block_start", index=0, content_block=block),
            message_event("ping"),
            *(text_delta(w) for w in tagged),
            message_event("content_block_stop", index=0),
            message_event("message_delta", delta=stop, usage=usage),
            message_event("message_stop"),
        ]
    events: list[Any] = [chunk("", role=True), *(chunk(w) for w in tagged), chunk(finish="stop")]
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": 11, "completion_tokens": len(words), "total_tokens": 11 + len(words)}
        events.append({**chunk(), "choices": [], "usage": usage})
    return [*events, "[DONE]"]


def answer_frames(provider: str, body: dict, eol: str = "\n", *, anthropic: bool = False) -> list[bytes]:
    return [frame(e, eol) for e in answer_events(provider, body, anthropic=anthropic)]


def answer_text(provider: str, words: list[str] = WORDS) -> str:
    return f"[{provider}] " + "".join(words)


# The `cut` scenario's words: characters of two, three and four bytes in UTF-8, escapes, an empty text
CUT_WORDS = ["Grüße", " aus", " 東京", " 🎉", "", ' "quoted" \\ back\\', " end."]


def cut_frames(provider: str, body: dict, *, anthropic: bool) -> list[bytes]:
    """The `cut` scenario's answer: CUT_WORDS written as UTF-8."""
    events = answer_events(provider, body, anthropic=anthropic, words=CUT_WORDS)
    return [frame(e, escape_non_ascii=False) for e in events]


def hostile_cuts(data: bytes) -> list[bytes]:
    """`data` in pieces cut in the middle of every line, inside every character of more than one
    byte, and after every line end: between an event's `event:` and `data:` lines, and between the
    two line ends that close it."""
    points: set[int] = set()
    start = 0
    for i, byte in enumerate(data):
        if byte == 0x0A:
            points |= {(start + i) // 2, i + 1}
            start = i + 1
        elif byte >= 0xC0:  # the first byte of a character of two bytes or more
            points.add(i + 1)
    cuts = sorted(p for p in points if 0 < p < len(data))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


# The `thinking` scenario (Anthropic): a thinking block, its signature, then the answer's text.
THOUGHTS = ["Let me", " think."]
SIGNATURE = "sig-0123456789"


def thinking_events(provider: str, body: dict) -> list[Any]:
    events = answer_events(provider, body, anthropic=True)
    block = {"type": "thinking", "thinking": "", "signature": ""}
    thinking = [message_event("content_block_start", index=0, content_block=block)]
    for thought in THOUGHTS:
        delta = {"type": "thinking_delta", "thinking": thought}
        thinking.append(message_event("content_block_delta", index=0, delta=delta))
    delta = {"type": "signature_delta", "signature": SIGNATURE}
    thinking += [
        message_event("content_block_delta", index=0, delta=delta),
        message_event("content_block_stop", index=0),
    ]
    for event in events:  # the text moves to the second block
        if "index" in event:
            event["index"] = 1
    return [events[0], *thinking, *events[1:]]


# The `tool` scenario's calls: (name, arguments as JSON text, the pieces it is streamed in).
TOOL_CALLS = [
    ("get_weather", '{"city": "Paris"}', ['{"city":', ' "Paris"}']),
    ("get_time", '{"tz": "CET"}', ['{"tz"', ': "CET"}']),
]
TOOL_PREAMBLE = "Let me look."


def tool_call_id(provider_dialect: str, n: int) -> str:
    return f"toolu_up_{n}" if provider_dialect == "anthropic" else f"call_up_{n}"


def tool_results(body: dict, *, anthropic: bool) -> list[str]:
    """The tool results a request ends with, as `id=content` (`(error)` added for failed ones)."""
    messages = body.get("messages") or []
    if anthropic:
        blocks = messages[-1].get("content") if messages else None
        if not isinstance(blocks, list):
            return []
        out = []
        for b in blocks:
            if b.get("type") == "tool_result":
                content = b["content"] if isinstance(b["content"], str) else b["content"][0]["text"]
                out.append(f"{b['tool_use_id']}={content}" + (" (error)" if b.get("is_error") else ""))
        return out
    out = []
    for m in reversed(messages):
        if m.get("role") != "tool":
            break
        out.insert(0, f"{m['tool_call_id']}={m['content']}")
    return out


def tool_events(body: dict, *, anthropic: bool) -> list[Any]:
    """Text, then the two parallel tool calls of TOOL_CALLS, their arguments in pieces; usage with
    cached prompt tokens (4 of 11)."""
    if anthropic:
        events: list[Any] = [message_start()]
        events[0]["message"]["usage"] = {"input_tokens": 7, "cache_read_input_tokens": 4, "output_tokens": 1}
        block = {"type": "text", "text": ""}
        events += [
            message_event("content_block_start", index=0, content_block=block),
            text_delta(TOOL_PREAMBLE),
        ]
        events.append(message_event("content_block_stop", index=0))
        for n, (name, _, pieces) in enumerate(TOOL_CALLS, 1):
            use = {"type": "tool_use", "id": tool_call_id("anthropic", n), "name": name, "input": {}}
            events.append(message_event("content_block_start", index=n, content_block=use))
            for piece in pieces:
                delta = {"type": "input_json_delta", "partial_json": piece}
                events.append(message_event("content_block_delta", index=n, delta=delta))
            events.append(message_event("content_block_stop", index=n))
        stop = {"stop_reason": "tool_use", "stop_sequence": None}
        events += [message_event("message_delta", delta=stop, usage={"output_tokens": 9})]
        return [*events, message_event("message_stop")]
    events = [chunk("", role=True), chunk(TOOL_PREAMBLE)]
    for n, (name, _, pieces) in enumerate(TOOL_CALLS):
        first = {"index": n, "id": tool_call_id("openai", n + 1), "type": "function"}
        first["function"] = {"name": name, "arguments": ""}
        events.append(tool_chunk([first]))
        events += [tool_chunk([{"index": n, "function": {"arguments": piece}}]) for piece in pieces]
    events.append(chunk(finish="tool_calls"))
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append({**chunk(), "choices": [], "usage": tool_usage()})
    return [*events, "[DONE]"]


def tool_chunk(calls: list[dict]) -> dict:
    out = chunk()
    out["choices"][0]["delta"] = {"tool_calls": calls}
    return out


def tool_usage() -> dict:
    return {
        "prompt_tokens": 11,
        "completion_tokens": 9,
        "total_tokens": 20,
        "prompt_tokens_details": {"cached_tokens": 4},
    }


def tool_message(*, anthropic: bool) -> dict:
    """The `tool` scenario's non-streamed answer with the calls."""
    if anthropic:
        content: list[dict] = [{"type": "text", "text": TOOL_PREAMBLE}]
        for n, (name, arguments, _) in enumerate(TOOL_CALLS, 1):
            use = {"type": "tool_use", "id": tool_call_id("anthropic", n), "name": name}
            content.append({**use, "input": json.loads(arguments)})
        usage = {"input_tokens": 7, "cache_read_input_tokens": 4, "output_tokens": 9}
        message = {"id": "msg_up", "type": "message", "role": "assistant", "model": "up", "content": content}
        return message | {"stop_reason": "tool_use", "stop_sequence": None, "usage": usage}
    calls = [
        {
            "id": tool_call_id("openai", n),
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        for n, (name, arguments, _) in enumerate(TOOL_CALLS, 1)
    ]
    message = {"role": "assistant", "content": TOOL_PREAMBLE, "tool_calls": calls}
    choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
    return {"id": "chatcmpl-up", "object": "chat.completion", "choices": [choice], "usage": tool_usage()}


def images_seen(body: dict, *, anthropic: bool) -> list[str]:
    content = (body.get("messages") or [{}])[-1].get("content")
    out = []
    for part in content if isinstance(content, list) else []:
        if anthropic and part.get("type") == "image":
            source = part["source"]
            seen = f"base64 {source['media_type']} {source['data']}" if source["type"] == "base64" else ""
            out.append(seen or f"url {source['url']}")
        elif not anthropic and part.get("type") == "image_url":
            url = part["image_url"]["url"]
            head, _, data = url.partition(",")
            out.append(f"base64 {head[5:].split(';')[0]} {data}" if url.startswith("data:") else f"url {url}")
    return out


class Upstream:
    """Start with `Upstream()`, read `url`, stop with `close()`."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.counts: dict[str, int] = {}
        self.active: dict[str, int] = {}  # `busy` requests each provider (path) holds now
        self.peak: dict[str, int] = {}  # ... and the most it held at once
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="upstream", daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "upstream did not start"
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self.gate = asyncio.Event()  # `gated` answers wait for it after their opening
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            self._ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def open_gate(self, is_open: bool = True) -> None:
        """Let the `gated` answers finish (or, with False, hold the next ones again)."""
        self.loop.call_soon_threadsafe(self.gate.set if is_open else self.gate.clear)

    def requests(self, model: str) -> list[Seen]:
        return [s for s in self.seen if s.model == model]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.01)
        raise AssertionError(f"upstream: condition not met within {timeout}s; seen {self.seen}")

    # -- the HTTP side ---------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        seen = Seen(method, path, headers, body)
        self.seen.append(seen)

        async def watch_close() -> None:
            with contextlib.suppress(ConnectionError):
                await reader.read()  # EOF or reset: the relay closed its side
            seen.closed = time.monotonic()

        watcher = asyncio.create_task(watch_close())
        try:
            await Scenario(self, seen, writer).run()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(watcher), 0.5)
            if seen.closed is None and writer.is_closing():
                seen.closed = time.monotonic()
            watcher.cancel()
            writer.close()


class Scenario:
    """What the upstream answers, chosen by the model name (`t-<scenario>`), in the request's dialect."""

    def __init__(self, upstream: Upstream, seen: Seen, writer: asyncio.StreamWriter) -> None:
        self.up = upstream
        self.seen = seen
        self.writer = writer
        self.body = seen.body if isinstance(seen.body, dict) else {}
        self.provider = seen.provider
        self.anthropic = seen.path.endswith("/messages")

    async def run(self) -> None:
        if self.seen.method == "GET" and self.seen.path.endswith("/models"):
            ids = ["t-echo", "t-listed", "x-unrelated"]
            await self.json(200, {"object": "list", "data": [{"id": i, "object": "model"} for i in ids]})
            return
        name = self.seen.model.split("-", 1)[-1]
        key = f"{self.provider}:{self.seen.model}:{json.dumps(self.body.get('messages'))}"
        self.up.counts[key] = n = self.up.counts.get(key, 0) + 1
        handler = getattr(self, "s_" + name.replace("-", "_"), None)
        if handler is None:
            await self.error(404, f"no model {self.seen.model}", "not_found_error")
            return
        await handler(n)

    # -- writing ---------------------------------------------------------------------------------
    async def json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (
            f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n{extra}\r\n"
        )
        self.writer.write(head.encode() + body)
        await self.writer.drain()

    def error_body(self, message: str, kind: str) -> dict:
        if self.anthropic:
            return {"type": "error", "error": {"type": kind, "message": message}}
        return {"error": {"message": message, "type": kind, "code": None}}

    async def error(self, status: int, message: str, kind: str, headers: dict | None = None) -> None:
        await self.json(status, self.error_body(message, kind), headers)

    async def start_stream(self, *, chunked: bool = True) -> None:
        head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n"
        head += "transfer-encoding: chunked\r\n\r\n" if chunked else "\r\n"
        self.writer.write(head.encode())
        await self.writer.drain()

    async def send(self, data: bytes, *, chunked: bool = True) -> None:
        self.writer.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        await self.writer.drain()

    async def end(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    def frames(self, eol: str = "\n") -> list[bytes]:
        return answer_frames(self.provider, self.body, eol, anthropic=self.anthropic)

    def opening(self) -> list[bytes]:
        """The frames before the first text: the role chunk, or message_start and the block's start."""
        if self.anthropic:
            return self.frames()[:2]
        return self.frames()[:1]

    def text(self, text: str) -> bytes:
        return frame(text_delta(text) if self.anthropic else chunk(text))

    def partial(self) -> list[bytes]:
        """The opening and the first two words: "[a] Hello from"."""
        opening = self.opening()
        words = [f for f in self.frames() if b"Hello" in f or b" from" in f]
        return [*opening, *words[:2]]

    async def answer(self, eol: str = "\n") -> None:
        await self.start_stream()
        for f in self.frames(eol):
            await self.send(f)
        await self.end()

    def reset(self) -> None:
        """Abort with a TCP reset, as a crashed process or a proxy would."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    # -- scenarios -------------------------------------------------------------------------------
    async def s_echo(self, n: int) -> None:
        if self.body.get("stream"):
            await self.answer()
            return
        if self.anthropic:
            content = [{"type": "text", "text": answer_text(self.provider)}]
            usage = {"input_tokens": 11, "output_tokens": len(WORDS)}
            message = {"id": "msg_up", "type": "message", "role": "assistant", "model": "up"}
            message |= {"content": content, "stop_reason": "end_turn", "stop_sequence": None, "usage": usage}
            await self.json(200, message)
            return
        message = {"role": "assistant", "content": answer_text(self.provider)}
        usage = {"prompt_tokens": 11, "completion_tokens": len(WORDS), "total_tokens": 11 + len(WORDS)}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        completion = {"id": "chatcmpl-up", "object": "chat.completion", "choices": [choice], "usage": usage}
        await self.json(200, completion)

    async def s_tool(self, n: int) -> None:
        """Two parallel tool calls (TOOL_CALLS); once the request ends with their results, an
        answer that quotes them: `results: id=content; ...`."""
        results = tool_results(self.body, anthropic=self.anthropic)
        if results:
            await self.s_said("results: " + "; ".join(results))
            return
        if not self.body.get("stream"):
            await self.json(200, tool_message(anthropic=self.anthropic))
            return
        await self.start_stream()
        for event in tool_events(self.body, anthropic=self.anthropic):
            await self.send(frame(event))
        await self.end()

    async def s_image(self, n: int) -> None:
        """Says which images the last message holds, in its own dialect's terms: `base64 <media
        type> <data>` or `url <url>`, whatever dialect the client used."""
        await self.s_said("saw: " + "; ".join(images_seen(self.body, anthropic=self.anthropic)))

    async def s_said(self, text: str) -> None:
        """`text` as a whole answer, streamed or not, in the request's dialect."""
        if self.body.get("stream"):
            await self.start_stream()
            if self.anthropic:
                events = answer_events(self.provider, self.body, anthropic=True)
                events[3:-3] = [text_delta(text)]
            else:
                events = [chunk("", role=True), chunk(text), chunk(finish="stop"), "[DONE]"]
            for event in events:
                await self.send(frame(event))
            await self.end()
            return
        if self.anthropic:
            message = {"id": "msg_up", "type": "message", "role": "assistant", "model": "up"}
            message |= {"content": [{"type": "text", "text": text}], "stop_reason": "end_turn"}
            await self.json(
                200, message | {"stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 3}}
            )
            return
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        await self.json(200, {"id": "chatcmpl-up", "object": "chat.completion", "choices": [choice]})

    async def s_cut(self, n: int) -> None:
        """CUT_WORDS as an answer, its bytes cut at hostile places (hostile_cuts), each piece sent
        on its own with a moment between, so that it arrives alone."""
        await self.start_stream()
        for piece in hostile_cuts(b"".join(cut_frames(self.provider, self.body, anthropic=self.anthropic))):
            await self.send(piece)
            await asyncio.sleep(0.005)
        await self.end()

    async def s_thinking(self, n: int) -> None:
        """Anthropic only: the answer after a thinking block (thinking_events)."""
        if not self.anthropic:
            await self.error(404, "thinking is a Messages scenario", "not_found_error")
            return
        await self.start_stream()
        for event in thinking_events(self.provider, self.body):
            await self.send(frame(event))
        await self.end()

    async def s_together(self, n: int) -> None:
        """The first two text events alone (a relay learns from them how the provider writes one),
        the other text events in one write, as they arrive when a relay fell behind, then the end."""
        frames = self.frames()
        apart = (3 if self.anthropic else 1) + 2  # the opening frames and two text events
        together = apart + len(WORDS) - 2
        await self.start_stream()
        for f in frames[:apart]:
            await self.send(f)
            await asyncio.sleep(0.005)
        await self.send(b"".join(frames[apart:together]))
        await asyncio.sleep(0.005)
        for f in frames[together:]:
            await self.send(f)
        await self.end()

    async def s_bytewise(self, n: int) -> None:
        await self.start_stream()
        for f in self.frames():
            for i in range(len(f)):
                await self.send(f[i : i + 1])
        await self.end()

    async def s_crlf(self, n: int) -> None:
        await self.start_stream()
        data = b"".join(self.frames("\r\n"))
        # cut inside every CRLF pair so a CR ends one network chunk and its LF starts the next
        for part in data.split(b"\r\n"):
            await self.send(part + b"\r")
            await self.send(b"\n")
        await self.end()

    async def s_keepalive(self, n: int) -> None:
        await self.start_stream()
        await self.send(b": keepalive\n\n")
        for f in self.frames():
            await self.send(b":\n" + f + b": ping\n\n")
        await self.end()

    async def s_multiline(self, n: int) -> None:
        """Every event's JSON spread over several `data:` lines."""
        await self.start_stream()
        events = answer_events(self.provider, self.body, anthropic=self.anthropic)
        for e in events:
            await self.send(frame(e, multiline=True))
        await self.end()

    async def s_error_mid(self, n: int) -> None:
        await self.start_stream()
        for f in self.partial():
            await self.send(f)
        await self.send(frame(self.error_body("The server had an error while processing", "api_error")))
        await self.end()

    async def s_surrogate(self, n: int) -> None:
        """Legal JSON that is no UTF-8: a lone surrogate escaped in the text, then an emoji sent as
        an escaped pair split over two events, then the rest of the answer."""
        await self.start_stream()
        frames = self.frames()
        opening = self.opening()
        for f in opening:
            await self.send(f)
        for text in ("lone \ud800 here ", "\ud83d", "\ude00"):
            await self.send(self.text(text))
        for f in frames[len(opening) :]:
            await self.send(f)
        await self.end()

    async def s_event_apart(self, n: int) -> None:
        """An `event: error` line at the end of the opening's read, then the answer's text in reads of
        its own: SSE makes the line and the text one event (an error, with the text's data)."""
        await self.start_stream()
        frames = self.frames()
        opening = self.opening()
        for f in [*opening[:-1], opening[-1] + b"event: error\n", *frames[len(opening) :]]:
            await self.send(f)
            await asyncio.sleep(0.005)  # each arrives alone
        await self.end()

    async def s_reset(self, n: int) -> None:
        await self.start_stream()
        for f in self.partial():
            await self.send(f)
        await asyncio.sleep(0.05)
        self.reset()

    async def s_drop(self, n: int) -> None:
        """A clean close mid-answer on a close-delimited body: looks like an end, is not one."""
        await self.start_stream(chunked=False)
        for f in self.partial():
            await self.send(f, chunked=False)

    async def s_ratelimit_once(self, n: int) -> None:
        if n == 1:
            await self.error(429, "Rate limit reached", "rate_limit_error", {"retry-after": "1"})
            return
        await self.answer()

    async def s_ratelimit(self, n: int) -> None:
        await self.error(429, "Rate limit reached", "rate_limit_error", {"retry-after": "3600"})

    async def s_fail_a(self, n: int) -> None:
        """500 from provider a, an answer from b."""
        if self.provider == "a":
            await self.error(500, "internal error", "api_error")
            return
        await self.answer()

    async def s_unauthorized_a(self, n: int) -> None:
        """401 from provider a (its key is refused), an answer from b."""
        if self.provider == "a":
            await self.error(401, "invalid api key", "authentication_error")
            return
        await self.answer()

    async def s_forbidden_a(self, n: int) -> None:
        """403 from provider a (its key may not use the model), an answer from b."""
        if self.provider == "a":
            await self.error(403, "this key may not use the model", "permission_error")
            return
        await self.answer()

    async def s_bad_request(self, n: int) -> None:
        await self.error(400, "temperature is out of range", "invalid_request_error")

    async def s_no_first_token(self, n: int) -> None:
        await self.start_stream()
        for _ in range(200):  # comments keep the connection busy but are not tokens
            await self.send(b": keepalive\n\n")
            await asyncio.sleep(0.1)

    async def s_silent(self, n: int) -> None:
        """Takes the request and says nothing at all."""
        await asyncio.sleep(30)

    async def s_idle(self, n: int) -> None:
        await self.start_stream()
        for f in self.partial():
            await self.send(f)
        await asyncio.sleep(30)

    async def s_slow(self, n: int) -> None:
        """A token every 0.1 s, for ever (total timeout, client disconnect)."""
        await self.start_stream()
        for f in self.opening():
            await self.send(f)
        for i in range(600):
            await self.send(self.text(f"t{i} "))
            await asyncio.sleep(0.1)

    async def s_gated(self, n: int) -> None:
        """The opening at once, the rest of the answer (usage included) once the gate opens."""
        await self.start_stream()
        frames = self.frames()
        opening = self.opening()
        for f in opening:
            await self.send(f)
        await self.up.gate.wait()
        for f in frames[len(opening) :]:
            await self.send(f)
        await self.end()

    async def s_busy(self, n: int) -> None:
        """An answer after 0.2 s, counting how many requests each provider holds at once."""
        up, name = self.up, self.provider
        up.active[name] = up.active.get(name, 0) + 1
        up.peak[name] = max(up.peak.get(name, 0), up.active[name])
        try:
            await asyncio.sleep(0.2)
            await self.answer()
        finally:
            up.active[name] -= 1

    def key(self) -> str:
        if self.anthropic:
            return self.seen.headers.get("x-api-key", "")
        return self.seen.headers.get("authorization", "").removeprefix("Bearer ")

    async def s_echo_key(self, n: int) -> None:
        """Echoes the key back, whole and in part, as careless providers do."""
        key = self.key()
        message = f"Incorrect API key provided: {key}. Also {key[:10]}...{key[-12:]}"
        await self.error(401, message, "authentication_error")

    async def s_echo_key_mid(self, n: int) -> None:
        key = self.key()
        await self.start_stream()
        for f in self.opening():
            await self.send(f)
        await self.send(self.text(f"your key is {key} ok"))
        await self.send(frame(self.error_body(f"key {key} was revoked", "api_error")))
        await self.end()


def blackhole() -> tuple[socket.socket, list[socket.socket]]:
    """A port whose connection queue is full: connecting to it hangs (for the connect timeout)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(2):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(listener.getsockname())
        fillers.append(s)
    return listener, fillers


# Model prefixes by the dialect of the provider serving them: plain, hanging, slow, unreachable.
PREFIXES = {"openai": ("t", "h", "z", "c"), "anthropic": ("m", "hm", "zm", "cm")}


def relay_config(upstream_url: str, blackhole_port: int, *, extra: str = "") -> str:
    """A server config with providers on the loopback upstream (see the module docs): providers
    a, b, hang, slowpoke, blackhole speak OpenAI; am, bm, hang-m, slowpoke-m, blackhole-m (on the
    same upstream paths) speak Anthropic."""
    return f"""
server: {{max_body: 65536}}
ai:
  providers:
    - name: a
      base_url: {upstream_url}/a/v1
      api_key: ${{RELAY_TEST_KEY}}
      models: ["t-*"]
      retries: {{attempts: 2, backoff: 0.05, max_backoff: 0.1, max_retry_after: 5}}
      timeouts: {{connect: 2, first_token: 5, idle: 5, total: 20}}
      prices: {{input: 1.0, output: 2.0}}
      cooldown: 0  # its scenarios fail on purpose, test after test: never passed over
    - name: b
      base_url: {upstream_url}/b/v1
      api_key: ${{RELAY_TEST_KEY}}
      models: ["t-*", "t-listed"]
      retries: {{attempts: 1}}
    - name: hang
      base_url: {upstream_url}/a/v1
      api_key: ${{RELAY_TEST_KEY}}
      models: ["h-*"]
      retries: {{attempts: 1}}
      timeouts: {{connect: 0.5, first_token: 0.8, idle: 0.8, total: 2.0}}
    - name: slowpoke
      base_url: {upstream_url}/a/v1
      models: ["z-*"]
      retries: {{attempts: 1}}
      timeouts: {{first_token: 5, idle: 5, total: 1.5}}
    - name: blackhole
      base_url: http://127.0.0.1:{blackhole_port}/v1
      models: ["c-*"]
      retries: {{attempts: 1}}
      timeouts: {{connect: 0.5}}
    - name: am
      type: anthropic
      base_url: {upstream_url}/a/v1
      api_key: ${{RELAY_TEST_KEY}}
      models: ["m-*"]
      retries: {{attempts: 2, backoff: 0.05, max_backoff: 0.1, max_retry_after: 5}}
      timeouts: {{connect: 2, first_token: 5, idle: 5, total: 20}}
      prices: {{input: 1.0, output: 2.0}}
      cooldown: 0  # its scenarios fail on purpose, test after test: never passed over
    - name: bm
      type: anthropic
      base_url: {upstream_url}/b/v1
      api_key: ${{RELAY_TEST_KEY}}
      models: ["m-*"]
      retries: {{attempts: 1}}
    - name: hang-m
      type: anthropic
      base_url: {upstream_url}/a/v1
      models: ["hm-*"]
      retries: {{attempts: 1}}
      timeouts: {{connect: 0.5, first_token: 0.8, idle: 0.8, total: 2.0}}
    - name: slowpoke-m
      type: anthropic
      base_url: {upstream_url}/a/v1
      models: ["zm-*"]
      retries: {{attempts: 1}}
      timeouts: {{first_token: 5, idle: 5, total: 1.5}}
    - name: blackhole-m
      type: anthropic
      base_url: http://127.0.0.1:{blackhole_port}/v1
      models: ["cm-*"]
      retries: {{attempts: 1}}
      timeouts: {{connect: 0.5}}
    - name: simulated
      type: simulated
      models: [simulated]
      simulation: {{tokens_per_s: 200, first_token_ms: 20}}
{extra}
"""
