"""Messages streams from Anthropic providers take the relay's fast path: plain text deltas reach a
/v1/messages client as the provider's own bytes, straight from the upstream connection
(dashboard/relay/forward.py); every other event is parsed as before. Against the real loopback
upstream: in process, where what went out as the provider's bytes and what was parsed can be told
apart and compared with the parser alone, and through the real server with the anthropic SDK, a raw
HTTP client and a named api key's books."""

from __future__ import annotations

import json

import anthropic
import pytest

from dashboard.config import parse_config
from dashboard.relay import Relay, dialects
from dashboard.relay.dialects import Dialect
from dashboard.relay.errors import RelayError
from dashboard.relay.metrics import Measure
from dashboard.relay.sse import SSEParser
from tests.support import run_async
from tests.test_keys import KEY, TEAM, keys_config, spend_when, used
from tests.upstream import (
    CUT_WORDS,
    SIGNATURE,
    THOUGHTS,
    answer_frames,
    answer_text,
    cut_frames,
    frame,
    relay_config,
    thinking_events,
    tool_events,
)

ANTHROPIC = dialects.get("anthropic")
BOOKS = "tok-forward-books-0123456789"  # a key of its own for the test of what keys are charged
HI = [{"role": "user", "content": "hi"}]
Sent = list[tuple[str, bytes]]  # what the client was sent, in order: ("forwarded" | "parsed", bytes)


def upstream_frames(scenario: str) -> list[bytes]:
    """The frames provider `a` (the loopback upstream's /a/) sends for a scenario of ours."""
    body = {"stream": True}
    if scenario == "cut":
        return cut_frames("a", body, anthropic=True)
    if scenario == "thinking":
        return [frame(e) for e in thinking_events("a", body)]
    if scenario == "tool":
        return [frame(e) for e in tool_events(body, anthropic=True)]
    return answer_frames("a", body, anthropic=True)


def as_sent(frames: list[bytes]) -> bytes:
    """What a Messages client is sent of a provider's frames: every one but the pings, as it is."""
    return b"".join(f for f in frames if not f.startswith(b"event: ping\n"))


def events_of(data: bytes) -> list[bytes]:
    return [e + b"\n\n" for e in data.split(b"\n\n") if e]


def text_delta(event: bytes) -> bool:
    return event.startswith(b"event: content_block_delta\n") and b'"type":"text_delta"' in event


# -- in process: the route's loop, with the client's socket as a list --------------------------------
@pytest.fixture
def ai(upstream, monkeypatch):
    monkeypatch.setenv("RELAY_TEST_KEY", KEY)
    return parse_config(relay_config(upstream.url, 9, extra="topics: {}")).ai


def relay_once(
    ai, model: str, *, forward: bool = True, text: bool = False, client: Dialect = ANTHROPIC
) -> tuple[Sent, Measure]:
    """One streamed completion for a Messages client (or another `client`) as the route runs it
    (dashboard/web/relay.py), with or without the fast path; `text`: the chunks' text is read, as
    the `ai` feed has it."""

    async def go() -> tuple[Sent, Measure]:
        relay = Relay(ai)
        measure = Measure(model=model)
        body = {"model": model, "max_tokens": 100, "messages": HI, "stream": True}
        sent: Sent = []

        def write(data: bytes) -> bool:  # the client's socket, always ready
            sent.append(("forwarded", data))
            return True

        try:
            stream = await relay.open_stream(body, measure, client, text=text)
            renderer = client.renderer(stream.provider.dialect, usage=True)
            try:
                if forward:
                    stream.forward(write)
                async for batch in stream.batches():
                    sent.append(("parsed", renderer.frames(batch)))
                    stream.handed_on(batch)
                sent.append(("parsed", renderer.end()))
            except RelayError as exc:
                sent.append(("parsed", renderer.error(exc)))
            finally:
                await stream.aclose()
        finally:
            await relay.aclose()
        return [(how, data) for how, data in sent if data], measure

    return run_async(go(), timeout=30)


def books(measure: Measure) -> tuple:
    """What metering keeps of a completion: the estimate's inputs, the usage, the finish, the TTFT."""
    return (
        measure.text_chunks,
        measure.text_chars,
        measure.usage,
        measure.finish_reason,
        measure.first_token_out is not None,
    )


def received(sent: Sent) -> bytes:
    return b"".join(data for _, data in sent)


def forwarded(sent: Sent) -> list[bytes]:
    return [event for how, data in sent if how == "forwarded" for event in events_of(data)]


def test_text_deltas_cut_anywhere_go_out_as_the_providers_bytes_and_the_rest_is_parsed(ai):
    """The `cut` scenario sends its bytes in pieces cut inside lines, inside UTF-8 characters and
    between an event's `event:` and `data:` lines."""
    sent, _ = relay_once(ai, "m-cut")
    frames = upstream_frames("cut")
    assert received(sent) == as_sent(frames), "the client gets the provider's events, byte for byte"
    out = forwarded(sent)
    assert out, "text deltas arriving alone go out as the provider's bytes"
    assert all(text_delta(e) for e in out), f"only text deltas go out unparsed: {out}"
    assert len(out) == len(set(out)) and all(e in frames for e in out), "whole events, once each"
    parsed = b"".join(data for how, data in sent if how == "parsed")
    for event in frames:
        if not text_delta(event) and not event.startswith(b"event: ping\n"):
            assert event in parsed, f"{event!r} was not parsed"


@pytest.mark.parametrize("scenario", ["echo", "cut", "thinking", "tool", "error-mid", "echo-key-mid"])
def test_the_fast_path_changes_nothing_the_client_or_the_books_see(ai, scenario):
    """Usage, stop reasons, tool use, thinking, an error event and a key to redact: the same stream and
    the same measure with the fast path as with the parser alone."""
    fast, fast_measure = relay_once(ai, f"m-{scenario}")
    slow, slow_measure = relay_once(ai, f"m-{scenario}", forward=False)
    assert all(how == "parsed" for how, _ in slow)
    assert received(fast) == received(slow), scenario
    assert books(fast_measure) == books(slow_measure), scenario
    assert all(text_delta(e) for e in forwarded(fast)), forwarded(fast)
    if scenario in ("error-mid", "echo-key-mid"):
        (error,) = SSEParser().feed(events_of(received(fast))[-1])
        assert error.event == "error" and json.loads(error.data)["error"]["type"] == "api_error", error
    else:
        assert received(fast) == as_sent(upstream_frames(scenario))
    if scenario == "echo-key-mid":
        assert b"your key is [redacted] ok" in received(fast) and KEY.encode() not in received(fast)


def test_metering_counts_the_texts_and_tokens_the_full_parse_counts(ai):
    """What the `ai` feed reads (every event decoded, its text kept) and what a Messages client is
    sent on the fast path are metered alike; the text's length as written counts escapes and UTF-8
    bytes, as OpenAI's plain events do."""
    _, fast = relay_once(ai, "m-echo")
    _, full = relay_once(ai, "m-echo", text=True)
    assert books(fast) == books(full)
    assert (fast.text_chunks, fast.text_chars) == (6, len(answer_text("a")))
    _, cut = relay_once(ai, "m-cut")
    words = [f"[a] {CUT_WORDS[0]}", *CUT_WORDS[1:]]
    assert cut.text_chunks == sum(1 for w in words if w)
    assert cut.text_chars == sum(len(json.dumps(w, ensure_ascii=False).encode()) - 2 for w in words)
    assert cut.usage["completion_tokens"] == len(CUT_WORDS) and cut.finish_reason == "stop"


@pytest.mark.parametrize(
    ("model", "timeout"), [("hm-idle", "idle timeout (0.8s)"), ("zm-slow", "total timeout (1.5s)")]
)
def test_timeouts_end_a_stream_on_the_fast_path(ai, model, timeout):
    sent, _ = relay_once(ai, model)
    if model == "zm-slow":
        assert forwarded(sent), "tokens a tenth of a second apart each go out as the provider's bytes"
    (error,) = SSEParser().feed(events_of(received(sent))[-1])
    assert error.event == "error" and timeout in json.loads(error.data)["error"]["message"], error


# -- through the real server ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(upstream, tmp_path_factory):
    from tests.support import ServerFactory

    factory = ServerFactory(tmp_path_factory.mktemp("forward-anthropic"))
    keys = f"    - {{name: team-a, token: {TEAM}}}\n    - {{name: books, token: {BOOKS}, daily_usd: 1.0}}\n"
    yield factory(keys_config(upstream, keys), env={"RELAY_TEST_KEY": KEY})
    factory.close()


def claude(server, token: str = TEAM) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=token, max_retries=0, timeout=20)


@pytest.mark.parametrize("scenario", ["echo", "cut", "thinking"])
def test_a_messages_client_is_sent_the_providers_events_byte_for_byte(server, scenario):
    body = {"model": f"m-{scenario}", "max_tokens": 100, "messages": HI, "stream": True}
    with server.client(timeout=20) as http:
        response = http.post("/v1/messages", json=body, headers={"x-api-key": TEAM})
    assert response.status_code == 200, response.text
    assert response.content == as_sent(upstream_frames(scenario))


def test_the_anthropic_sdk_reads_text_thinking_usage_and_errors_from_the_fast_path(server):
    with claude(server).messages.stream(model="m-cut", max_tokens=100, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == answer_text("a", CUT_WORDS)
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == len(CUT_WORDS)
    with claude(server).messages.stream(model="m-thinking", max_tokens=100, messages=HI) as stream:
        final = stream.get_final_message()
    thinking, answer = final.content
    assert (thinking.thinking, thinking.signature) == ("".join(THOUGHTS), SIGNATURE), thinking
    assert answer.text == answer_text("a") and final.usage.output_tokens == 6
    got: list[str] = []
    stream = claude(server).messages.stream(model="m-error-mid", max_tokens=100, messages=HI)
    with pytest.raises(anthropic.APIStatusError) as info, stream as events:
        got.extend(events.text_stream)
    assert "".join(got) == "[a] Hello from" and "api_error" in str(info.value.body), info.value.body


def test_no_key_reaches_the_client_from_a_text_delta(server):
    body = {"model": "m-echo-key-mid", "max_tokens": 100, "messages": HI, "stream": True}
    with server.client(timeout=20) as http:
        text = http.post("/v1/messages", json=body, headers={"x-api-key": TEAM}).text
    assert "your key is [redacted] ok" in text
    for piece in (KEY, KEY[:10], KEY[-12:]):
        assert piece not in text, f"key material {piece!r} reached the client: {text!r}"


def test_the_key_is_charged_the_usage_of_streams_on_the_fast_path(server):
    for model in ("m-echo", "m-cut"):
        with claude(server, BOOKS).messages.stream(model=model, max_tokens=100, messages=HI) as stream:
            stream.until_done()
    report = spend_when(server, lambda r: used(r, "books") >= 2)
    spent = report["keys"]["books"]
    assert used(report, "books") == 2, report
    assert (spent["prompt_tokens"], spent["completion_tokens"]) == (22, 6 + len(CUT_WORDS)), spent
    assert spent["held_usd"] == 0 and report["last"]["outcome"] == "ok", report
