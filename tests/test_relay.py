"""The /v1 relay through the real server, with the official openai SDK as the client: parsing of
hostile-but-valid upstream streams, usage, errors, models, keys kept secret, access and limits."""

from __future__ import annotations

import asyncio
import json
import secrets

import httpx
import openai
import pytest

from dashboard.web.relay import STARTS_PER_TURN
from tests.support import ServerFactory
from tests.upstream import answer_text, blackhole, relay_config

KEY = "sk-test-" + secrets.token_hex(24)


@pytest.fixture(scope="module")
def server(upstream, tmp_path_factory):
    hole, fillers = blackhole()
    factory = ServerFactory(tmp_path_factory.mktemp("relay"))
    config = relay_config(upstream.url, hole.getsockname()[1], extra="topics: {}")
    yield factory(config, env={"RELAY_TEST_KEY": KEY})
    factory.close()
    for s in [hole, *fillers]:
        s.close()


def sdk(server, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=20, **kwargs)


def streamed_text(client: openai.OpenAI, model: str, **kwargs) -> tuple[str, list]:
    chunks = list(
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], stream=True, **kwargs
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


@pytest.mark.parametrize("scenario", ["echo", "bytewise", "crlf", "keepalive", "together"])
def test_stream_arrives_whole_however_the_upstream_cuts_it(server, upstream, scenario):
    text, chunks = streamed_text(sdk(server), f"t-{scenario}")
    assert text == answer_text("a"), f"{scenario}: got {text!r}"
    assert chunks[-1].choices[0].finish_reason == "stop"
    seen = upstream.requests(f"t-{scenario}")[-1]
    assert seen.headers["authorization"] == f"Bearer {KEY}", "the provider's key is sent upstream"


def test_usage_chunk_is_relayed_when_asked_and_hidden_when_not(server, upstream):
    client = sdk(server)
    _, chunks = streamed_text(client, "t-echo", stream_options={"include_usage": True})
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    _, chunks = streamed_text(client, "t-echo")
    assert all(c.choices for c in chunks), "the usage chunk the relay asked for reached a client that did not"
    # the relay asked for usage upstream anyway, to measure the completion
    assert upstream.requests("t-echo")[-1].body["stream_options"] == {"include_usage": True}


def test_non_streamed_completion(server):
    completion = sdk(server).chat.completions.create(
        model="t-echo", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == answer_text("a")
    assert completion.usage.total_tokens == 17


def test_error_object_mid_stream_raises_in_the_sdk(server):
    stream = sdk(server).chat.completions.create(
        model="t-error-mid", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    got = []
    with pytest.raises(openai.APIError) as info:
        for c in stream:
            got.append(c.choices[0].delta.content or "")
    assert "".join(got) == "[a] Hello from", "text before the error is relayed once"
    assert "mid-stream" in info.value.message and "error while processing" in info.value.message


def test_simulated_provider_streams_and_says_so(server):
    text, chunks = streamed_text(sdk(server), "simulated")
    assert "simulated provider" in text and len(chunks) > 20
    assert chunks[1].model == "simulated"


def test_the_simulated_provider_honours_max_tokens_streamed_or_not(server):
    """Its usage is what keys are charged: an answer longer than max_tokens overspent budgets."""
    client, hi = sdk(server), [{"role": "user", "content": "hi"}]
    completion = client.chat.completions.create(model="simulated", messages=hi, max_tokens=5)
    assert completion.usage.completion_tokens == 5, completion.usage
    assert len(completion.choices[0].message.content.split()) == 5
    assert completion.choices[0].finish_reason == "length"
    newer = client.chat.completions.create(model="simulated", messages=hi, max_completion_tokens=4)
    assert newer.usage.completion_tokens == len(newer.choices[0].message.content.split()) == 4
    text, chunks = streamed_text(client, "simulated", max_tokens=5, stream_options={"include_usage": True})
    assert len(text.split()) == chunks[-1].usage.completion_tokens == 5
    with server.client(timeout=20) as http:  # the Anthropic dialect's max_tokens, not streamed
        body = {"model": "simulated", "max_tokens": 5, "messages": hi}
        answer = http.post("/v1/messages", json=body).json()
    assert answer["usage"]["output_tokens"] == 5 and answer["stop_reason"] == "max_tokens", answer
    assert len(answer["content"][0]["text"].split()) == 5


def test_models_lists_named_models_and_the_upstreams_matching_ones(server):
    ids = [m.id for m in sdk(server).models.list()]
    assert {"t-echo", "t-listed", "simulated"} <= set(ids), ids
    assert "x-unrelated" not in ids, "an upstream model no pattern matches is not served"


def test_unknown_model_and_bad_requests_are_openai_errors(server, upstream):
    client = sdk(server)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found" and "nope" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="t-echo", messages=[])
    assert "messages" in info.value.message
    before = len(upstream.requests("t-bad-request"))
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="t-bad-request", messages=[{"role": "user", "content": "x"}])
    assert "temperature is out of range" in info.value.message
    asked = len(upstream.requests("t-bad-request"))
    assert asked == before + 1, "a 400 is neither retried nor sent elsewhere"
    with server.client() as http:
        response = http.post(
            "/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
        # Wrong types inside an otherwise good body are the client's error, said as such (not a 500).
        hi = [{"role": "user", "content": "hi"}]
        for body, fragment in (
            ({"model": "t-echo", "stream": True, "stream_options": 5, "messages": hi}, "stream_options"),
            ({"model": "t-echo", "messages": [{"role": "user", "content": [{"text": 5}]}]}, "content"),
            ({"model": "t-echo", "messages": [{"role": "user", "content": 5}]}, "content"),
        ):
            response = http.post("/v1/chat/completions", json=body)
            error = response.json()["error"]
            assert response.status_code == 400 and fragment in error["message"], (body, response.text)


def test_oversized_body_is_refused_with_413(server):
    big = "x" * 70_000
    with pytest.raises(openai.APIStatusError) as info:
        sdk(server).chat.completions.create(model="t-echo", messages=[{"role": "user", "content": big}])
    assert info.value.status_code == 413


def test_the_key_never_leaves_the_server(server, upstream):
    client = sdk(server)
    seen: list[str] = []
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="t-echo-key", messages=[{"role": "user", "content": "x"}])
    seen.append(info.value.response.text)
    assert "[redacted]" in info.value.message and "api_key" in info.value.message
    with server.client() as http:
        with http.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "t-echo-key-mid", "messages": [{"role": "user", "content": "x"}], "stream": True},
        ) as response:
            seen.append(response.read().decode())
        assert "your key is [redacted] ok" in seen[-1]
        for path in ("/", "/api/topics", "/healthz", "/v1/models"):
            seen.append(http.get(path).text)
    assert upstream.requests("t-echo-key-mid"), "the upstream was asked"
    seen.append(server.output())
    for text in seen:
        for piece in (KEY, KEY[:10], KEY[-12:]):
            assert piece not in text, f"key material {piece!r} leaked into: {text[:300]!r}"


def test_v1_is_open_without_tokens(server):
    with server.client() as http:
        assert http.get("/v1/models").status_code == 200


def test_v1_requires_the_dashboard_token_when_configured(upstream, serve):
    server = serve(
        relay_config(upstream.url, 9, extra="auth: {api_tokens: [dash-token]}\ntopics: {}"),
        env={"RELAY_TEST_KEY": KEY},
    )
    with pytest.raises(openai.AuthenticationError):
        sdk(server).models.list()
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0).models.list()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="dash-token", max_retries=0, timeout=20)
    text, _ = streamed_text(client, "t-echo")
    assert text == answer_text("a")
    assert upstream.requests("t-echo")[-1].headers["authorization"] == f"Bearer {KEY}", (
        "the dashboard token is never forwarded; the provider gets its own key"
    )


def test_relayed_completions_are_counted_in_metrics(server):
    streamed_text(sdk(server), "t-echo")
    with server.client() as http:
        response = http.get("/metrics")
    assert response.status_code == 200, response.text
    text = response.text
    assert 'dashboard_ai_completions_total{outcome="ok",provider="a"}' in text
    assert 'dashboard_ai_time_to_first_token_seconds_count{model="t-*",provider="a"}' in text
    assert 'dashboard_ai_relay_overhead_seconds_bucket{le="0.001",provider="a"}' in text


def test_wrong_method_is_a_json_error(server):
    with httpx.Client(base_url=server.url) as http:
        response = http.get("/v1/chat/completions")
    assert response.status_code == 405 and "error" in response.json()


def test_a_burst_of_streams_arrives_whole_while_it_waits_its_turns(server):
    """More requests at once than begin in one turn of the event loop (web/relay.py, Turns): every
    one of them is answered in full, those that waited their turn too."""
    body = {"model": "t-echo", "messages": [{"role": "user", "content": "hi"}], "stream": True}

    async def burst() -> list[bytes]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            answers = await asyncio.gather(
                *(http.post("/v1/chat/completions", json=body) for _ in range(3 * STARTS_PER_TURN))
            )
        assert all(answer.status_code == 200 for answer in answers), [a.status_code for a in answers]
        return [answer.content for answer in answers]

    for content in asyncio.run(burst()):
        text = "".join(_contents(content))
        assert text == answer_text("a") and content.endswith(b"data: [DONE]\n\n"), content[-200:]


def _contents(stream: bytes) -> list[str]:
    out = []
    for line in stream.split(b"\n"):
        if line.startswith(b"data: {"):
            choices = json.loads(line[6:])["choices"]
            if choices:
                out.append(choices[0]["delta"].get("content") or "")
    return out
