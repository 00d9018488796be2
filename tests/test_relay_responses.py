"""POST /v1/responses through the real server with the openai SDK's `responses.create` and
`responses.stream`, against an OpenAI-type and an Anthropic-type provider, streamed and not: text
and message-list input, instructions, tool calls and their `function_call_output` round trip,
usage, errors as `error` and `response.failed`, and the stateful parts refused with a 400."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.support import ServerFactory
from tests.upstream import TOOL_CALLS, TOOL_PREAMBLE, answer_text, relay_config, tool_call_id

PROVIDERS = {"openai": "t", "anthropic": "m"}  # model prefix served by a provider of that type
TOOLS = [
    {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}},
]


@pytest.fixture(scope="module")
def server(upstream, tmp_path_factory):
    factory = ServerFactory(tmp_path_factory.mktemp("responses"))
    yield factory(relay_config(upstream.url, 9, extra="topics: {}"), env={"RELAY_TEST_KEY": "k"})
    factory.close()


def gpt(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=20)


def respond(client: openai.OpenAI, stream: bool, **kwargs):
    """The final Response, through `responses.stream` or `responses.create`."""
    if not stream:
        return client.responses.create(**kwargs)
    with client.responses.stream(**kwargs) as events:
        kinds = [event.type for event in events]
        final = events.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    return final


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_text_input_with_instructions(server, upstream, provider, stream):
    model = f"{PROVIDERS[provider]}-echo"
    response = respond(gpt(server), stream, model=model, input="hi", instructions="be brief")
    assert response.output_text == answer_text("a") and response.status == "completed"
    assert response.usage.output_tokens == 6 and response.usage.input_tokens == 11
    sent = upstream.requests(model)[-1].body
    if provider == "anthropic":
        assert sent["system"] == "be brief" and sent["messages"] == [{"role": "user", "content": "hi"}]
    else:
        assert sent["messages"][0] == {"role": "system", "content": "be brief"}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_function_calls_and_their_outputs_round_trip(server, upstream, provider, stream):
    client, model = gpt(server), f"{PROVIDERS[provider]}-tool"
    conversation: list = [{"role": "user", "content": [{"type": "input_text", "text": "weather and time?"}]}]
    first = respond(client, stream, model=model, input=conversation, tools=TOOLS, tool_choice="auto")
    calls = [item for item in first.output if item.type == "function_call"]
    expected = [
        (tool_call_id(provider, n), name, json.loads(arguments))
        for n, (name, arguments, _) in enumerate(TOOL_CALLS, 1)
    ]
    assert [(c.call_id, c.name, json.loads(c.arguments)) for c in calls] == expected, first.output
    assert first.output_text == TOOL_PREAMBLE
    assert first.usage.input_tokens == 11 and first.usage.input_tokens_details.cached_tokens == 4
    sent = upstream.requests(model)[-1].body
    if provider == "anthropic":
        assert [t["name"] for t in sent["tools"]] == ["get_weather", "get_time"]
    conversation += [c.model_dump(exclude_none=True) for c in first.output if c.type == "function_call"]
    conversation += [
        {"type": "function_call_output", "call_id": c.call_id, "output": out}
        for c, out in zip(calls, ["18C", "12:00"], strict=True)
    ]
    second = respond(client, stream, model=model, input=conversation, tools=TOOLS)
    ids = [c.call_id for c in calls]
    assert second.output_text == f"results: {ids[0]}=18C; {ids[1]}=12:00"


def test_streamed_events_are_the_semantic_ones(server):
    events = list(gpt(server).responses.create(model="m-tool", input="go", tools=TOOLS, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in kinds and "response.function_call_arguments.delta" in kinds
    assert kinds.count("response.output_item.added") == kinds.count("response.output_item.done") == 3
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert kinds[-1] == "response.completed" and events[-1].response.status == "completed"


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_an_error_mid_stream_is_error_then_response_failed(server, provider):
    events = list(
        gpt(server).responses.create(model=f"{PROVIDERS[provider]}-error-mid", input="hi", stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[-2:] == ["error", "response.failed"], kinds
    assert "error while processing" in events[-2].message
    assert events[-1].response.status == "failed" and events[-1].response.error.code


@pytest.mark.parametrize(
    ("param", "extra"),
    [
        ("previous_response_id", {"previous_response_id": "resp_123"}),
        ("store", {"store": True}),
        ("reasoning", {"reasoning": {"effort": "high"}}),
        ("background", {"background": True}),
        ("text.verbosity", {"text": {"verbosity": "low"}}),
        ("service_tier", {"service_tier": "flex"}),
    ],
)
def test_what_the_relay_cannot_do_is_a_400_naming_it(server, param, extra):
    with pytest.raises(openai.BadRequestError) as info:
        gpt(server).responses.create(model="t-echo", input="hi", **extra)
    assert info.value.code == "unsupported_parameter" and f"'{param}'" in info.value.message


def test_a_json_schema_format_is_refused_for_an_anthropic_provider(server):
    form = {"type": "json_schema", "name": "x", "schema": {"type": "object"}}
    with pytest.raises(openai.BadRequestError) as info:
        gpt(server).responses.create(model="m-echo", input="hi", text={"format": form})
    assert "'response_format'" in info.value.message and "provider 'am'" in info.value.message


def test_a_model_no_provider_serves_is_a_404_in_openai_shape(server):
    with httpx.Client(base_url=server.url, timeout=10) as http:
        response = http.post("/v1/responses", json={"model": "nope", "input": "hi"})
        assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
        response = http.post("/v1/responses", json={"model": "t-echo"})
        assert response.status_code == 400 and "'input'" in response.json()["error"]["message"]


def test_the_same_lifecycle_as_the_other_routes(upstream, serve):
    """Api tokens and a key's rpm, fallback, retries, timeouts and the metrics, on /v1/responses."""
    keys = "api_keys: [{name: team, token: team-token, rpm: 2}]"
    extra = f"auth:\n  api_tokens: [plain-token]\n  {keys}\ntopics: {{}}"
    server = serve(relay_config(upstream.url, 9, extra=extra), env={"RELAY_TEST_KEY": "k"})
    plain = openai.OpenAI(base_url=f"{server.url}/v1", api_key="plain-token", max_retries=0, timeout=20)
    assert respond(plain, True, model="t-fail-a", input="hi").output_text == answer_text("b")
    assert respond(plain, True, model="m-ratelimit-once", input="hi").output_text == answer_text("a")
    with pytest.raises(openai.APIStatusError) as info:
        plain.responses.create(model="h-no-first-token", input="hi", stream=True)
    assert info.value.status_code == 504 and info.value.code == "first_token_timeout"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).responses.create(
            model="t-echo", input="hi"
        )
    team = openai.OpenAI(base_url=f"{server.url}/v1", api_key="team-token", max_retries=0, timeout=20)
    for _ in range(2):
        team.responses.create(model="t-echo", input="hi")
    with pytest.raises(openai.RateLimitError) as limited:
        team.responses.create(model="t-echo", input="hi")
    assert limited.value.code == "rate_limited" and "team" in limited.value.message
    with httpx.Client(base_url=server.url, timeout=10) as http:
        metrics = http.get("/metrics").text
    assert 'dashboard_ai_completions_total{outcome="ok",provider="b"} 1.0' in metrics, metrics[:2000]
    assert 'dashboard_ai_completions_total{outcome="timeout",provider="hang"} 1.0' in metrics


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_a_client_that_leaves_stops_the_upstream(server, upstream, provider):
    model = {"openai": "z-slow", "anthropic": "zm-slow"}[provider]
    with gpt(server).responses.stream(model=model, input="go on") as events:
        deltas = 0
        for event in events:
            deltas += event.type == "response.output_text.delta"
            if deltas == 3:
                break
    left = time.monotonic()
    seen = upstream.requests(model)[-1]
    upstream.wait_for(lambda: seen.closed is not None, timeout=5)
    assert seen.closed - left < 1.0, f"upstream closed {seen.closed - left:.2f}s after the client left"
