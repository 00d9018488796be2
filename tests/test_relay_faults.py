"""The relay when providers fail: retries and fallbacks only before the first token, each timeout
named, broken streams never passed off as complete answers, upstreams closed when clients leave;
each against providers of both dialects (OpenAI and Anthropic), with the openai SDK as the client."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.support import ServerFactory
from tests.upstream import PREFIXES, answer_text, blackhole, relay_config

KEY = "sk-faults-0123456789abcdef0123456789"


@pytest.fixture(scope="module")
def hole():
    listener, fillers = blackhole()
    yield listener.getsockname()[1]
    for s in [listener, *fillers]:
        s.close()


@pytest.fixture(scope="module")
def server(upstream, hole, tmp_path_factory):
    factory = ServerFactory(tmp_path_factory.mktemp("faults"))
    yield factory(relay_config(upstream.url, hole, extra="topics: {}"), env={"RELAY_TEST_KEY": KEY})
    factory.close()


@pytest.fixture(params=sorted(PREFIXES))
def m(request):
    """Model names served by providers of one dialect: m.t("echo") is "t-echo" for OpenAI's."""
    plain, hang, slow, hole = PREFIXES[request.param]

    class Models:
        def t(self, name: str) -> str:
            return f"{plain}-{name}"

        def h(self, name: str) -> str:
            return f"{hang}-{name}"

        def z(self, name: str) -> str:
            return f"{slow}-{name}"

        def c(self, name: str) -> str:
            return f"{hole}-{name}"

    return Models()


def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=20)


def ask(server, model: str, *, content: str = "hi", stream: bool = True):
    return sdk(server).chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], stream=stream
    )


def read_stream(stream) -> tuple[str, BaseException | None]:
    text = []
    try:
        for c in stream:
            if c.choices:
                text.append(c.choices[0].delta.content or "")
    except openai.APIError as exc:
        return "".join(text), exc
    return "".join(text), None


def test_429_with_retry_after_is_retried_after_waiting(m, server, upstream):
    text, error = read_stream(ask(server, m.t("ratelimit-once"), content="429 once"))
    assert error is None and text == answer_text("a")
    first, second = upstream.requests(m.t("ratelimit-once"))[-2:]
    assert [first.provider, second.provider] == ["a", "a"]
    assert second.opened - first.opened >= 0.9, "Retry-After: 1 was not honoured"


def test_long_retry_after_moves_on_and_ends_as_a_rate_limit_error(m, server, upstream):
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:
        ask(server, m.t("ratelimit"), content="429 always", stream=False)
    assert time.monotonic() - started < 3, "a Retry-After beyond max_retry_after is not waited for"
    assert [s.provider for s in upstream.requests(m.t("ratelimit"))] == ["a", "b"]
    assert info.value.response.headers.get("retry-after") == "3600"


def test_5xx_is_retried_then_falls_back_to_the_next_provider(m, server, upstream):
    text, error = read_stream(ask(server, m.t("fail-a")))
    assert error is None and text == answer_text("b")
    assert [s.provider for s in upstream.requests(m.t("fail-a"))] == ["a", "a", "b"]


@pytest.mark.parametrize("scenario", ["unauthorized-a", "forbidden-a"])
def test_401_and_403_from_a_provider_move_on_to_the_next_at_once(m, server, upstream, scenario):
    text, error = read_stream(ask(server, m.t(scenario)))
    assert error is None and text == answer_text("b"), (text, error)
    assert [s.provider for s in upstream.requests(m.t(scenario))] == ["a", "b"], "its key is not retried"


@pytest.mark.parametrize("scenario", ["reset", "drop", "error-mid"])
def test_a_stream_broken_after_text_ends_with_an_error_and_is_not_retried(m, server, upstream, scenario):
    text, error = read_stream(ask(server, m.t(scenario)))
    assert text == "[a] Hello from", f"text before the break is relayed once, got {text!r}"
    assert isinstance(error, openai.APIError), "a broken stream must not look like a complete answer"
    assert len(upstream.requests(m.t(scenario))) == 1, "no retry once text was relayed"


def test_connect_timeout_is_named(m, server):
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        ask(server, m.c("anything"))
    assert info.value.status_code == 504 and info.value.code == "connect_timeout"
    assert "connect timeout (0.5s)" in info.value.message
    assert time.monotonic() - started < 5


def test_first_token_timeout_is_named_and_comments_do_not_count(m, server):
    with pytest.raises(openai.InternalServerError) as info:
        ask(server, m.h("no-first-token"))
    assert info.value.status_code == 504 and info.value.code == "first_token_timeout"
    assert "first token timeout (0.8s)" in info.value.message


def test_idle_timeout_is_named_mid_stream(m, server):
    text, error = read_stream(ask(server, m.h("idle")))
    assert text == "[a] Hello from"
    assert isinstance(error, openai.APIError) and "idle timeout (0.8s)" in error.message
    assert error.code == "idle_timeout"


def test_total_timeout_is_named_mid_stream(m, server):
    started = time.monotonic()
    text, error = read_stream(ask(server, m.z("slow")))
    assert text.startswith("t0 t1 ")
    assert isinstance(error, openai.APIError) and "total timeout (1.5s)" in error.message
    assert error.code == "total_timeout"
    assert 1.4 < time.monotonic() - started < 6


def test_timeouts_on_non_streamed_requests_are_named_too(m, server):
    with pytest.raises(openai.InternalServerError) as info:
        ask(server, m.h("silent"), stream=False)
    assert info.value.code == "first_token_timeout", info.value.message
    with pytest.raises(openai.InternalServerError) as info:
        ask(server, m.z("no-first-token"), stream=False)  # a body that trickles for ever
    assert info.value.code == "total_timeout", info.value.message


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_closes_the_upstream_within_a_second(m, server, upstream, stream):
    model = m.t("slow")
    before = len(upstream.requests(model))
    with httpx.Client(base_url=server.url, timeout=10) as http:
        messages = [{"role": "user", "content": f"leave {stream}"}]
        body = {"model": model, "messages": messages, "stream": stream}
        if stream:
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                lines = response.iter_lines()
                got = [line for line, _ in zip(lines, range(6), strict=False) if line.startswith("data:")]
                assert len(got) >= 2
                left = time.monotonic()
        else:
            with pytest.raises(httpx.ReadTimeout):
                http.post("/v1/chat/completions", json=body, timeout=0.7)
            left = time.monotonic()
    seen = upstream.wait_for(lambda: len(upstream.requests(model)) > before and upstream.requests(model)[-1])
    upstream.wait_for(lambda: seen.closed is not None, timeout=5)
    assert seen.closed - left < 1.0, f"upstream closed {seen.closed - left:.2f}s after the client left"
