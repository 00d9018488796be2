"""Tool calls across dialects, through the real server: the openai SDK (chat completions) and the
anthropic SDK, each against an OpenAI-type and an Anthropic-type provider, streamed and not. Two
parallel tool calls come back with their ids, names and arguments; their results go round and come
back quoted; finish reasons and cached prompt tokens are translated; what cannot be translated is
a 400 naming the parameter and the provider."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from dashboard.relay.dialects import Chunk, ToolDelta, get
from dashboard.relay.dialects._anthropic_requests import to_chat, to_messages
from dashboard.relay.dialects.anthropic import ToAnthropic
from dashboard.relay.dialects.openai import ToOpenAI
from dashboard.relay.errors import Untranslatable, UpstreamProtocolError
from tests.doc_samples import sample
from tests.support import ROOT, ServerFactory
from tests.upstream import TOOL_CALLS, TOOL_PREAMBLE, relay_config, tool_call_id

PROVIDERS = {"openai": "t-tool", "anthropic": "m-tool"}  # the `tool` scenario at a provider of each type
QUESTION = "What is the weather in Paris, and the time in CET?"
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIME = {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}
RESULTS = ["18C", "unknown zone"]  # the second is a failed call's (is_error, where the client can say so)


@pytest.fixture(scope="module")
def server(upstream, tmp_path_factory):
    factory = ServerFactory(tmp_path_factory.mktemp("tools"))
    yield factory(relay_config(upstream.url, 9, extra="topics: {}"), env={"RELAY_TEST_KEY": "k"})
    factory.close()


def expected_calls(provider: str) -> list[tuple[str, str, dict]]:
    return [
        (tool_call_id(provider, n), name, json.loads(arguments))
        for n, (name, arguments, _) in enumerate(TOOL_CALLS, 1)
    ]


# -- the openai SDK ------------------------------------------------------------------------------
def gpt(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=20)


def openai_turn(client: openai.OpenAI, model: str, messages: list, stream: bool) -> dict:
    """One chat completion with the tools: its text, tool calls, finish reason and usage."""
    tools = [{"type": "function", "function": WEATHER}, {"type": "function", "function": TIME}]
    kwargs = {"model": model, "messages": messages, "tools": tools, "tool_choice": "auto"}
    if not stream:
        completion = client.chat.completions.create(**kwargs)
        message = completion.choices[0].message
        calls = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []]
        return {
            "text": message.content or "",
            "calls": calls,
            "finish": completion.choices[0].finish_reason,
            "usage": completion.usage,
        }
    out: dict = {"text": "", "calls": [], "finish": None, "usage": None}
    chunks = client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    for c in chunks:
        out["usage"] = c.usage or out["usage"]
        if not c.choices:
            continue
        delta = c.choices[0].delta
        out["text"] += delta.content or ""
        for call in delta.tool_calls or []:
            if call.index == len(out["calls"]):
                out["calls"].append([call.id, call.function.name, ""])
            out["calls"][call.index][2] += call.function.arguments or ""
        out["finish"] = c.choices[0].finish_reason or out["finish"]
    out["calls"] = [tuple(c) for c in out["calls"]]
    return out


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_openai_sdk_tool_calls_round_trip(server, upstream, provider, stream):
    client, model = gpt(server), PROVIDERS[provider]
    messages: list = [{"role": "user", "content": QUESTION}]
    first = openai_turn(client, model, messages, stream)
    calls = [(id_, name, json.loads(arguments)) for id_, name, arguments in first["calls"]]
    assert calls == expected_calls(provider), first
    assert first["text"] == TOOL_PREAMBLE and first["finish"] == "tool_calls"
    assert first["usage"].prompt_tokens == 11 and first["usage"].prompt_tokens_details.cached_tokens == 4
    sent = upstream.requests(model)[-1].body
    if provider == "anthropic":
        assert sent["tools"][0] == {
            "name": "get_weather",
            "input_schema": WEATHER["parameters"],
            "description": WEATHER["description"],
        }
        assert sent["tool_choice"] == {"type": "auto"}
    calls_sent = [
        {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}
        for id_, name, arguments in first["calls"]
    ]
    messages.append({"role": "assistant", "content": first["text"], "tool_calls": calls_sent})
    messages += [
        {"role": "tool", "tool_call_id": id_, "content": result}
        for (id_, _, _), result in zip(first["calls"], RESULTS, strict=True)
    ]
    second = openai_turn(client, model, messages, stream)
    ids = [c[0] for c in first["calls"]]
    assert second["text"] == f"results: {ids[0]}=18C; {ids[1]}=unknown zone", second
    assert second["finish"] == "stop" and not second["calls"]


# -- the anthropic SDK ---------------------------------------------------------------------------
def claude(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=20)


def anthropic_turn(client: anthropic.Anthropic, model: str, messages: list, stream: bool):
    tools = [
        {"name": t["name"], "description": t.get("description", ""), "input_schema": t["parameters"]}
        for t in (WEATHER, TIME)
    ]
    kwargs = {"model": model, "max_tokens": 200, "messages": messages, "tools": tools}
    if not stream:
        return client.messages.create(**kwargs, tool_choice={"type": "auto"})
    with client.messages.stream(**kwargs, tool_choice={"type": "auto"}) as events:
        return events.get_final_message()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_anthropic_sdk_tool_calls_round_trip(server, upstream, provider, stream):
    client, model = claude(server), PROVIDERS[provider]
    messages: list = [{"role": "user", "content": QUESTION}]
    first = anthropic_turn(client, model, messages, stream)
    uses = [b for b in first.content if b.type == "tool_use"]
    assert [(b.id, b.name, b.input) for b in uses] == expected_calls(provider), first
    assert first.content[0].type == "text" and first.content[0].text == TOOL_PREAMBLE
    assert first.stop_reason == "tool_use"
    assert (first.usage.input_tokens, first.usage.cache_read_input_tokens) == (7, 4), first.usage
    sent = upstream.requests(model)[-1].body
    if provider == "openai":
        assert sent["tools"][0] == {"type": "function", "function": WEATHER}
        assert sent["tool_choice"] == "auto"
    messages.append(
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]}
    )
    results = [
        {"type": "tool_result", "tool_use_id": b.id, "content": result, "is_error": result == RESULTS[1]}
        for b, result in zip(uses, RESULTS, strict=True)
    ]
    messages.append({"role": "user", "content": results})
    second = anthropic_turn(client, model, messages, stream)
    # An OpenAI-type provider has no error flag: the failure is said in the result's text.
    failed = "unknown zone (error)" if provider == "anthropic" else "Error: unknown zone"
    assert second.content[0].text == f"results: {uses[0].id}=18C; {uses[1].id}={failed}"
    assert second.stop_reason == "end_turn"


# -- what maps to what, and what is refused ------------------------------------------------------
@pytest.mark.parametrize(
    ("openai_choice", "anthropic_choice"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "get_time"}}, {"type": "tool", "name": "get_time"}),
    ],
)
def test_tool_choice_maps_both_ways(openai_choice, anthropic_choice):
    chat = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": TIME}],
    }
    messages = to_messages({**chat, "tool_choice": openai_choice})
    assert messages["tool_choice"] == anthropic_choice
    assert to_chat({**messages, "tool_choice": anthropic_choice})["tool_choice"] == openai_choice


def test_parallel_tool_calls_off_is_disable_parallel_tool_use():
    chat = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": TIME}],
    }
    messages = to_messages({**chat, "parallel_tool_calls": False})
    assert messages["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    back = to_chat(messages)
    assert back["parallel_tool_calls"] is False and back["tool_choice"] == "auto"


def test_sampling_user_and_system_map_both_ways():
    chat = {
        "model": "m",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "max_tokens": 9,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["END"],
        "user": "u-1",
    }
    messages = to_messages(chat)
    assert messages == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 9,
        "system": "be brief",
        "temperature": 0.5,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
    }
    assert to_chat(messages) == chat


@pytest.mark.parametrize(
    ("param", "extra"),
    [
        ("response_format", {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
        ("n", {"n": 2}),
        ("logprobs", {"logprobs": True}),
        ("top_logprobs", {"top_logprobs": 2}),
        ("seed", {"seed": 7}),
        ("presence_penalty", {"presence_penalty": 0.5}),
        ("logit_bias", {"logit_bias": {"1": 2}}),
    ],
)
def test_openai_sdk_is_refused_what_an_anthropic_provider_cannot_take(server, upstream, param, extra):
    before = len(upstream.requests("m-echo"))
    with pytest.raises(openai.BadRequestError) as info:
        gpt(server).chat.completions.create(
            model="m-echo", messages=[{"role": "user", "content": "hi"}], **extra
        )
    assert info.value.status_code == 400 and info.value.code == "unsupported_parameter"
    assert f"'{param}'" in info.value.message and "provider 'am'" in info.value.message, info.value.message
    assert len(upstream.requests("m-echo")) == before, "nothing reaches the provider"


@pytest.mark.parametrize(
    ("param", "extra"),
    [
        ("top_k", {"top_k": 5}),
        ("thinking", {"thinking": {"type": "enabled", "budget_tokens": 1024}}),
        ("metadata.foo", {"metadata": {"foo": "bar"}}),
    ],
)
def test_anthropic_sdk_is_refused_what_an_openai_provider_cannot_take(server, param, extra):
    kwargs = {"model": "t-echo", "max_tokens": 2000, "messages": [{"role": "user", "content": "hi"}]}
    kwargs["extra_body"] = extra
    with pytest.raises(anthropic.BadRequestError) as info:
        claude(server).messages.create(**kwargs)
    assert info.value.body["error"]["type"] == "invalid_request_error"
    message = info.value.body["error"]["message"]
    assert f"'{param}'" in message and "provider 'a'" in message, message


def test_a_refused_parameter_is_not_refused_for_a_provider_of_the_same_dialect(server):
    completion = gpt(server).chat.completions.create(
        model="t-echo", messages=[{"role": "user", "content": "hi"}], seed=7, n=1
    )
    assert completion.choices[0].message.content


def test_untranslatable_names_the_parameter():
    with pytest.raises(Untranslatable) as info:
        to_chat({"model": "m", "messages": [], "max_tokens": 1, "top_k": 3})
    assert info.value.param == "top_k"


def test_the_documented_agent_loop_runs_against_the_simulated_provider(server, capsys):
    """docs/ai-relay.md's agent loop, as it is (but for the server's address): the simulated provider
    calls the tool, then answers with its result."""
    loop = sample(ROOT / "docs" / "ai-relay.md", "client: agent loop")
    exec(loop.replace("http://127.0.0.1:8000", server.url), {})
    assert capsys.readouterr().out == "The tool answered: 18C and sunny in Paris.\n"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_the_simulated_provider_calls_a_tool_for_the_anthropic_sdk(server, stream):
    tool = {"name": "get_time", "input_schema": TIME["parameters"]}
    messages = [{"role": "user", "content": "call get_time for CET"}]
    first = anthropic_turn(claude(server), "simulated", messages, stream)
    use = first.content[-1]
    assert first.stop_reason == "tool_use" and (use.name, use.input) == ("get_time", {"tz": "CET"}), first
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "12:00"}]},
    ]
    second = claude(server).messages.create(
        model="simulated", max_tokens=100, messages=messages, tools=[tool]
    )
    assert second.content[0].text == "The tool answered: 12:00."


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages", {"model": "t-echo", "max_tokens": 5, "messages": HI, "tools": ["x"]}),
        ("/v1/messages", {"model": "t-echo", "max_tokens": 5, "messages": HI, "tool_choice": "auto"}),
        ("/v1/messages", {"model": "t-echo", "max_tokens": 5, "messages": HI, "metadata": "x"}),
        ("/v1/chat/completions", {"model": "m-echo", "messages": HI, "tools": [1]}),
        ("/v1/chat/completions", {"model": "m-echo", "messages": [{"role": "assistant", "tool_calls": "x"}]}),
        ("/v1/responses", {"model": "t-echo", "input": "hi", "text": "x"}),
        ("/v1/responses", {"model": "m-echo", "input": [{"type": "function_call", "arguments": 5}]}),
    ],
)
def test_fields_of_the_wrong_shape_are_400s(server, path, body):
    with httpx.Client(base_url=server.url, timeout=10) as http:
        response = http.post(path, json=body)
    assert response.status_code == 400, response.text


CHAT = {"model": "m", "messages": HI}
MESSAGES = {"model": "m", "max_tokens": 5, "messages": HI}


@pytest.mark.parametrize(
    ("param", "extra"),
    [
        ("frequency_penalty", {"frequency_penalty": 1}),
        ("store", {"store": True}),
        ("metadata", {"metadata": {"a": "b"}}),
        ("reasoning_effort", {"reasoning_effort": "low"}),
        ("tools", {"tools": [{"type": "custom", "custom": {"name": "x"}}]}),
        ("tools[].function.strict", {"tools": [{"type": "function", "function": {**TIME, "strict": True}}]}),
        ("tool_choice", {"tool_choice": {"type": "allowed_tools"}}),
        ("messages[].name", {"messages": [{"role": "user", "content": "hi", "name": "bob"}]}),
        ("messages", {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
        (
            "image_url",
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x,y"}}]}
                ]
            },
        ),
    ],
)
def test_every_chat_parameter_messages_cannot_carry_is_refused(param, extra):
    with pytest.raises(Untranslatable) as info:
        to_messages({**CHAT, **extra})
    assert info.value.param == param, info.value.message


@pytest.mark.parametrize(
    ("param", "extra"),
    [
        ("service_tier", {"service_tier": "auto"}),
        ("tools", {"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
        ("tool_choice", {"tool_choice": {"type": "other"}}),
        ("user content", {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
        ("assistant content", {"messages": [{"role": "assistant", "content": [{"type": "thinking"}]}]}),
        (
            "image",
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]},
        ),
    ],
)
def test_every_messages_parameter_chat_cannot_carry_is_refused(param, extra):
    with pytest.raises(Untranslatable) as info:
        to_chat({**MESSAGES, **extra})
    assert info.value.param == param, info.value.message


def test_a_failed_tool_result_is_said_in_words_in_chat_completions():
    result = {
        "type": "tool_result",
        "tool_use_id": "t1",
        "content": [{"type": "text", "text": "boom"}],
        "is_error": True,
    }
    chat = to_chat(
        {**MESSAGES, "messages": [{"role": "user", "content": [result, {"type": "text", "text": "and?"}]}]}
    )
    assert chat["messages"] == [
        {"role": "tool", "tool_call_id": "t1", "content": "Error: boom"},
        {"role": "user", "content": "and?"},
    ]


def frames_data(raw: bytes) -> list[dict]:
    lines = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]
    return [json.loads(line) for line in lines if line != "[DONE]"]


def test_a_call_streamed_without_arguments_reaches_openai_clients_as_empty_json():
    renderer = ToOpenAI(usage=False)
    raw = renderer.frames(
        [
            Chunk("", start=True),
            Chunk("", tools=[ToolDelta(1, "toolu_1", "now")]),
            Chunk("", finish_reason="tool_calls"),
        ]
    )
    calls = [d["choices"][0]["delta"].get("tool_calls") for d in frames_data(raw)]
    arguments = "".join(c[0]["function"].get("arguments", "") for c in calls if c)
    assert arguments == "{}" and calls[1][0]["id"] == "toolu_1" and calls[1][0]["index"] == 0


def test_interleaved_parallel_calls_end_a_messages_stream_with_an_error_not_a_wrong_answer():
    renderer = ToAnthropic()
    renderer.frames([Chunk("", tools=[ToolDelta(0, "a", "f"), ToolDelta(1, "b", "g")])])
    with pytest.raises(UpstreamProtocolError):
        renderer.frames([Chunk("", tools=[ToolDelta(0, arguments="{}")])])


def test_cache_writes_and_reads_are_prompt_tokens_in_openai_words():
    message = {"type": "message", "content": [], "stop_reason": "end_turn"}
    counts = {
        "input_tokens": 5,
        "cache_creation_input_tokens": 3,
        "cache_read_input_tokens": 2,
        "output_tokens": 1,
    }
    usage = get("anthropic").parse_completion({**message, "usage": counts}).usage
    assert usage == {
        "prompt_tokens": 10,
        "completion_tokens": 1,
        "total_tokens": 11,
        "prompt_tokens_details": {"cached_tokens": 2},
    }
