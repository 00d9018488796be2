"""Both dialects, both ways, through the real server: the official anthropic SDK on /v1/messages and
the openai SDK on /v1/chat/completions, each against OpenAI and Anthropic providers, streamed and
not; multi-line upstream events; Anthropic-shaped errors; `?stream=true`."""

from __future__ import annotations

import json
import secrets

import anthropic
import httpx
import openai
import pytest

from dashboard.relay.dialects import Chunk
from tests.support import ServerFactory
from tests.upstream import answer_text, frame, message_event, relay_config

KEY = "sk-ant-test-" + secrets.token_hex(24)
PROVIDERS = {"openai": "t", "anthropic": "m"}  # model prefix served by a provider of that dialect
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(upstream, tmp_path_factory):
    factory = ServerFactory(tmp_path_factory.mktemp("dialects"))
    yield factory(relay_config(upstream.url, 9, extra="topics: {}"), env={"RELAY_TEST_KEY": KEY})
    factory.close()


def claude(server, api_key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=api_key, max_retries=0, timeout=20)


def gpt(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=20)


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
@pytest.mark.parametrize("scenario", ["echo", "bytewise", "crlf", "keepalive", "multiline"])
def test_anthropic_sdk_streams_from_either_provider(server, provider, scenario):
    model = f"{PROVIDERS[provider]}-{scenario}"
    with claude(server).messages.stream(model=model, max_tokens=100, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == answer_text("a"), f"{provider}/{scenario}: got {text!r}"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 6
    assert final.content[0].text == answer_text("a")


def test_the_simulated_provider_answers_the_anthropic_sdk(server):
    with claude(server).messages.stream(model="simulated", max_tokens=500, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "simulated provider" in text and final.usage.output_tokens > 20


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
@pytest.mark.parametrize("scenario", ["echo", "bytewise", "multiline"])
def test_openai_sdk_streams_from_either_provider(server, provider, scenario):
    chunks = list(
        gpt(server).chat.completions.create(
            model=f"{PROVIDERS[provider]}-{scenario}",
            messages=HI,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer_text("a"), f"{provider}/{scenario}: got {text!r}"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_non_streamed_answers_in_the_clients_dialect(server, provider):
    model = f"{PROVIDERS[provider]}-echo"
    message = claude(server).messages.create(model=model, max_tokens=100, messages=HI)
    assert message.content[0].text == answer_text("a") and message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 6)
    completion = gpt(server).chat.completions.create(model=model, messages=HI)
    assert completion.choices[0].message.content == answer_text("a")
    assert completion.choices[0].finish_reason == "stop" and completion.usage.total_tokens == 17


def test_an_anthropic_provider_is_asked_in_its_own_dialect(server, upstream):
    system = "be brief"
    gpt(server).chat.completions.create(
        model="m-echo",
        messages=[{"role": "system", "content": system}, *HI],
        max_tokens=50,
        stop="END",
        stream=True,
    ).close()
    seen = upstream.wait_for(lambda: upstream.requests("m-echo") and upstream.requests("m-echo")[-1])
    assert seen.path == "/a/v1/messages"
    assert seen.headers["x-api-key"] == KEY and seen.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen.headers, "the key goes in x-api-key only"
    assert seen.body == {
        "model": "m-echo",
        "messages": HI,
        "max_tokens": 50,
        "system": system,
        "stop_sequences": ["END"],
        "stream": True,
    }


def test_an_openai_provider_is_asked_in_its_own_dialect(server, upstream):
    claude(server).messages.create(
        model="t-echo", max_tokens=50, system="be brief", messages=HI, stop_sequences=["END"]
    )
    seen = upstream.requests("t-echo")[-1]
    assert seen.path == "/a/v1/chat/completions" and seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.body == {
        "model": "t-echo",
        "messages": [{"role": "system", "content": "be brief"}, *HI],
        "max_tokens": 50,
        "stop": ["END"],
        "stream": False,
    }


def test_multi_line_events_are_re_framed_one_data_line_per_line(server):
    """An upstream event over several data: lines reaches the client as the same data, each of its
    lines on a data: line of its own (a bare continuation line would be dropped by clients)."""
    for model in ("t-multiline", "m-multiline"):
        body = {"model": model, "messages": HI, "max_tokens": 10, "stream": True}
        path = "/v1/chat/completions" if model.startswith("t") else "/v1/messages"
        with httpx.Client(base_url=server.url, timeout=20) as http:
            raw = http.post(path, json=body).text
        events = [e for e in raw.split("\n\n") if e]
        for event in events:
            lines = event.split("\n")
            assert all(line.startswith(("data: ", "event: ")) for line in lines), event
            data = "\n".join(line[6:] for line in lines if line.startswith("data: "))
            if data != "[DONE]":
                json.loads(data)  # the event's data is whole
        assert len(events) >= 8 and any(e.count("\ndata: ") >= 3 for e in events), raw[:400]


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_errors_reach_the_anthropic_sdk_in_its_shape(server, provider):
    prefix = PROVIDERS[provider]
    client = claude(server)
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="nope", max_tokens=10, messages=HI)
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "not_found_error"
    assert "nope" in info.value.message
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=f"{prefix}-bad-request", max_tokens=10, messages=HI)
    assert "temperature is out of range" in info.value.message
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model=f"{prefix}-ratelimit", max_tokens=10, messages=HI)
    assert info.value.response.headers.get("retry-after") == "3600"
    got: list[str] = []
    model = f"{prefix}-error-mid"
    with (
        pytest.raises(anthropic.APIStatusError) as info,
        client.messages.stream(model=model, max_tokens=10, messages=HI) as stream,
    ):
        got.extend(stream.text_stream)
    assert "".join(got) == "[a] Hello from", "text before the error is relayed once"
    assert "error while processing" in str(info.value)


def test_bad_messages_requests_are_anthropic_errors(server):
    with httpx.Client(base_url=server.url, timeout=10) as http:
        response = http.post("/v1/messages", json={"model": "m-echo", "messages": HI})
        assert response.status_code == 400
        assert response.json()["error"] == {
            "type": "invalid_request_error",
            "message": "'max_tokens' is required and must be a positive integer",
        }
        response = http.post("/v1/messages", content=b"{}", headers={"content-type": "text/plain"})
        assert response.status_code == 415 and response.json()["type"] == "error"
        response = http.post("/v1/messages", json={}, headers={"origin": "https://evil.example"})
        assert response.status_code == 403 and response.json()["error"]["type"] == "permission_error"


def test_v1_messages_takes_the_api_token_in_x_api_key_or_as_bearer(upstream, serve):
    server = serve(
        relay_config(upstream.url, 9, extra="auth: {api_tokens: [dash-token]}\ntopics: {}"),
        env={"RELAY_TEST_KEY": KEY},
    )
    with pytest.raises(anthropic.AuthenticationError) as info:
        claude(server, api_key="wrong").messages.create(model="m-echo", max_tokens=10, messages=HI)
    assert info.value.body["error"]["type"] == "authentication_error"
    message = claude(server, api_key="dash-token").messages.create(model="m-echo", max_tokens=10, messages=HI)
    assert message.content[0].text == answer_text("a")
    assert upstream.requests("m-echo")[-1].headers["x-api-key"] == KEY, "the provider gets its own key"
    bearer = anthropic.Anthropic(base_url=server.url, auth_token="dash-token", max_retries=0)
    assert bearer.messages.create(model="t-echo", max_tokens=10, messages=HI).content[0].text


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_stream_true_in_the_query_streams(server, path):
    body = {"model": "m-echo", "messages": HI, "max_tokens": 10}
    with httpx.Client(base_url=server.url, timeout=20) as http:
        response = http.post(path, params={"stream": "true"}, json=body)
        assert response.headers["content-type"].startswith("text/event-stream"), response.text[:200]
        assert "Hello" in response.text
        refused = http.post(path, params={"stream": "maybe"}, json=body)
        assert refused.status_code == 400 and "stream" in refused.text


PLAIN_TOKENS = [
    '{"id":"c","choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}]}',
    '{"id":"c","choices":[{"index":0,"delta":{"content":""},"finish_reason":null}]}',
    # text that spells keys: escaped quotes inside a string are never the keys themselves
    '{"choices":[{"delta":{"content":"\\"usage\\":{} \\"finish_reason\\":\\"stop\\""},'
    '"finish_reason":null}]}',
    # text that ends in a backslash: its closing quote follows an escaped backslash
    '{"choices":[{"delta":{"content":"back\\\\"},"finish_reason":null}]}',
]


@pytest.mark.parametrize(
    "data",
    [
        *PLAIN_TOKENS,
        '{"choices":[{"delta":{"role":"assistant","content":""},"finish_reason":null}]}',
        '{"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}',
        '{"choices":[{"delta":{"content":"x"},"finish_reason":null}],"usage":{"prompt_tokens":1}}',
        '{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}',
        '{"choices":[{"delta":{"content":null,"tool_calls":[{"index":0}]},"finish_reason":null}]}',
        '{"choices":[{"delta":{"content":"","reasoning_content":"hm"},"finish_reason":null}]}',
        '{"error":{"message":"boom"}}',
    ],
)
def test_openai_events_read_without_decoding_agree_with_the_full_parse(data):
    """The relay recognises plain tokens by searching their text; whatever it reads that way must
    be what decoding the JSON says, and anything else must be left to the full parse."""
    from dashboard.relay import dialects
    from dashboard.relay.sse import SSEEvent

    dialect = dialects.get("openai")
    event = SSEEvent(data.encode())
    lean = dialect.lean_event(event, data)
    if lean is None:
        assert data not in PLAIN_TOKENS, f"a plain token was left to the full parse: {data}"
        return
    full = dialect.parse_event(event, data, json.loads(data), {})
    seen = (lean.token, lean.finish_reason, lean.usage, lean.start, lean.usage_only, lean.last)
    assert seen == (full.token, full.finish_reason, full.usage, full.start, full.usage_only, full.last), data


@pytest.mark.parametrize(
    "data",
    [
        *PLAIN_TOKENS,
        '{"choices":[{"delta":{"role":"assistant","content":""},"finish_reason":null}]}',
        '{"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}',
        '{"choices":[{"delta":{"content":"x"},"finish_reason":null}],"usage":{"prompt_tokens":1}}',
        '{"choices":[{"delta":{"content":null,"tool_calls":[{"index":0}]},"finish_reason":null}]}',
        '{"error":{"message":"boom"}}',
        "[DONE]",
    ],
)
def test_openai_plain_events_on_bytes_agree_with_the_lean_read(data):
    """The fast path's test on the provider's bytes (forward.py) takes exactly what the lean read of
    one parsed event takes, alone or among plain tokens, and counts the tokens alike."""
    from dashboard.relay import dialects
    from dashboard.relay.sse import SSEEvent

    dialect = dialects.get("openai")
    lean = None if data == "[DONE]" else dialect.lean_event(SSEEvent(data.encode()), data)
    frame = b"data: " + data.encode() + b"\n\n"
    expected = None if lean is None else (int(lean.token), lean.chars)
    assert dialect.plain_events(frame) == expected, data
    if lean is not None:  # the text's length as written, what metering estimates tokens from
        assert lean.chars == len(json.dumps(json.loads(data)["choices"][0]["delta"]["content"])) - 2
    plain = b"data: " + PLAIN_TOKENS[0].encode() + b"\n\n"  # "Hello"
    together = dialect.plain_events(plain + frame + plain)
    assert together == (None if expected is None else (expected[0] + 2, expected[1] + 10)), data


@pytest.mark.parametrize(
    "events",
    [
        b"data: " + PLAIN_TOKENS[0].encode() + b"\ndata: " + PLAIN_TOKENS[0].encode() + b"\n\n",  # multi-line
        b"event: delta\ndata: " + PLAIN_TOKENS[0].encode() + b"\n\n",
        b"id: 3\ndata: " + PLAIN_TOKENS[0].encode() + b"\n\n",
        b": keepalive\n\ndata: " + PLAIN_TOKENS[0].encode() + b"\n\n",
        b"data: " + PLAIN_TOKENS[0].encode() + b"\n\n\n\ndata: " + PLAIN_TOKENS[0].encode() + b"\n\n",
        b"data:" + PLAIN_TOKENS[0].encode() + b"\n\n",
        # its text never ends (the closing quote escaped): not JSON, for the parser to refuse
        b'data: {"choices":[{"finish_reason":null,"delta":{"content":"abc\\"}\n\n',
    ],
)
def test_openai_plain_events_leave_every_other_frame_to_the_parser(events):
    from dashboard.relay import dialects

    assert dialects.get("openai").plain_events(events) is None


def anthropic_delta(text: str, index: int = 0) -> bytes:
    """A text delta as the Messages API writes it: named, compact JSON, text in UTF-8."""
    delta = message_event("content_block_delta", index=index, delta={"type": "text_delta", "text": text})
    return frame(delta, escape_non_ascii=False)


ANTHROPIC_PLAIN = [
    anthropic_delta("Hello"),
    anthropic_delta(""),
    anthropic_delta("Grüße aus 東京 🎉", index=12),
    # text that spells keys and events: its quotes escaped, its line ends written as \n
    anthropic_delta('say "type":"message_delta","usage":{"output_tokens":9} "error":{}'),
    anthropic_delta('end"}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'),
    anthropic_delta("a backslash at the end \\"),
    anthropic_delta('\\" \\\\" \\\\\\"'),
]


@pytest.mark.parametrize("event", ANTHROPIC_PLAIN)
def test_anthropic_plain_text_deltas_on_bytes_agree_with_the_full_parse(event):
    """The fast path's test on the provider's bytes, the lean read of one parsed event and the full
    parse say the same of a plain text delta, alone or among others, and count its text alike."""
    from dashboard.relay import dialects
    from dashboard.relay.sse import SSEParser

    dialect = dialects.get("anthropic")
    (parsed,) = SSEParser().feed(event)
    data = parsed.data.decode()
    full = dialect.parse_event(parsed, data, json.loads(data), {})
    lean = dialect.lean_event(parsed, data)
    assert lean is not None, f"a plain text delta was left to the full parse: {event!r}"

    def said(c: Chunk) -> tuple:
        return (c.data, c.event, c.token, c.finish_reason, c.usage, c.start, c.tools, c.last)

    assert said(lean) == said(full)
    # the text's length as written (escapes, UTF-8 bytes), what metering estimates tokens from
    assert lean.chars == len(json.dumps(full.text, ensure_ascii=False).encode()) - 2
    assert dialect.plain_events(event) == (int(full.token), lean.chars)
    hello = ANTHROPIC_PLAIN[0]
    assert dialect.plain_events(hello + event + hello) == (int(full.token) + 2, lean.chars + 10)


ANTHROPIC_OTHERS = [
    frame({"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 3}}}),
    frame({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    frame({"type": "content_block_stop", "index": 0}),
    frame({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}),
    frame({"type": "message_stop"}),
    frame({"type": "ping"}),
    frame({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    frame(
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "{"},
        }
    ),
    frame({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hm"}}),
    frame(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "s"}}
    ),
    # a text delta with more in it: a key after the text, after the delta, a second type (the last wins)
    anthropic_delta("a").replace(b'"a"}}', b'"a","citations":[]}}'),
    anthropic_delta("a").replace(b'"a"}}', b'"a"},"usage":{"output_tokens":3}}'),
    anthropic_delta("a").replace(b'"a"}}', b'"a"},"type":"message_delta"}'),
    anthropic_delta("a").replace(b'"index":0', b'"index":"0"'),
    anthropic_delta("a").replace(b'"index":0', b'"index":-1'),
    anthropic_delta("a").replace(b'"index":0', b'"index":12345678901'),
    anthropic_delta("a").replace(b'"a"}}', b'"a\\"}}'),  # the text never ends
    anthropic_delta("a").replace(b'"a"', b'"a\nb"'),  # a line end in the text
]


@pytest.mark.parametrize("event", ANTHROPIC_OTHERS)
def test_anthropic_events_other_than_plain_text_deltas_are_parsed_in_full(event):
    from dashboard.relay import dialects
    from dashboard.relay.sse import SSEParser

    dialect = dialects.get("anthropic")
    assert dialect.plain_events(event) is None
    assert dialect.plain_events(ANTHROPIC_PLAIN[0] + event + ANTHROPIC_PLAIN[0]) is None
    for parsed in SSEParser().feed(event):
        assert dialect.lean_event(parsed, parsed.data.decode()) is None, event


@pytest.mark.parametrize(
    "events",
    [
        ANTHROPIC_PLAIN[0].split(b"\n", 1)[1],  # no `event:` line: the relay names it when it re-frames it
        ANTHROPIC_PLAIN[0].replace(b"content_block_delta\n", b"message_delta\n"),  # named otherwise
        ANTHROPIC_PLAIN[0].replace(b"event: ", b"event:"),
        ANTHROPIC_PLAIN[0].replace(
            b'{"type":"content_block_delta","index":0,', b'{"type": "content_block_delta", "index": 0, '
        ),
        ANTHROPIC_PLAIN[0].replace(b"\ndata", b"\nid: 3\ndata"),
        ANTHROPIC_PLAIN[0].replace(b"\n\n", b"\n\n\n"),
        b": keepalive\n\n" + ANTHROPIC_PLAIN[0],
        ANTHROPIC_PLAIN[0] + b"\n" + ANTHROPIC_PLAIN[0],
        ANTHROPIC_PLAIN[0] + ANTHROPIC_PLAIN[0][:-1],  # the second not ended
        ANTHROPIC_PLAIN[0][:-2] + ANTHROPIC_PLAIN[0],  # the first not ended: two events run together
    ],
)
def test_anthropic_plain_events_leave_every_other_frame_to_the_parser(events):
    from dashboard.relay import dialects

    assert dialects.get("anthropic").plain_events(events) is None
