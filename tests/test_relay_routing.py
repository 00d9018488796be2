"""Providers kept within their limits (max_concurrency, rpm, a bounded queue: 429 when full, 504 when
the wait passes first_token) and several providers sharing one model's load (fallback, round_robin,
least_busy, a failing provider's cool-down), against real loopback upstreams."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from dashboard.config import AIConfig
from dashboard.relay.upstream import Relay
from tests.upstream import answer_text


def provider(upstream, name: str, models: str, settings: str = "", *, path: str | None = None) -> str:
    """One provider on the loopback upstream, at the path `/<path or name>/v1`."""
    return f"""
    - name: {name}
      base_url: {upstream.url}/{path or name}/v1
      models: ["{models}"]
      retries: {{attempts: 1}}
      {settings}"""


def config(routing: str, *providers: str) -> str:
    return f"topics: {{}}\nai:\n  routing: {routing}\n  providers:{''.join(providers)}\n"


@pytest.fixture(scope="module")
def limited(upstream, tmp_path_factory):
    """A server routing by fallback, with providers at small limits."""
    from tests.support import ServerFactory

    factory = ServerFactory(tmp_path_factory.mktemp("limits"))
    yield factory(
        config(
            "fallback",
            provider(upstream, "cap", "cap-*", "max_concurrency: 2"),
            provider(upstream, "full", "full-*", "max_concurrency: 1\n      max_queue: 1"),
            provider(upstream, "tight", "tight-*", "max_concurrency: 1\n      timeouts: {first_token: 0.5}"),
            provider(upstream, "one", "one-*", "max_concurrency: 1"),
            provider(upstream, "flaky", "f-*", "cooldown: 1", path="a"),  # fail-a: 500 from /a/
            provider(upstream, "steady", "f-*", path="b"),
            provider(upstream, "rpm1", "rpm-*", "rpm: 2"),
            provider(upstream, "rpm2", "rpm-*"),
            provider(upstream, "solo", "solo-*", "rpm: 1\n      timeouts: {first_token: 0.5}"),
            provider(upstream, "tok1", "tok-*", "tpm: 100"),
            provider(upstream, "tok2", "tok-*"),
        )
    )
    factory.close()


@pytest.fixture
def gate(upstream):
    """`gated` answers hold after their opening until the test ends (or opens the gate itself)."""
    upstream.open_gate(False)
    yield upstream
    upstream.open_gate(True)


def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=20)


def ask(server, model: str, content: str = "hi") -> str:
    """The whole streamed answer's text."""
    stream = sdk(server).chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], stream=True
    )
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def providers_seen(upstream, model: str) -> list[str]:
    return [s.provider for s in upstream.requests(model)]


def test_concurrency_at_the_upstream_never_exceeds_max_concurrency(limited, upstream):
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: ask(limited, "cap-busy", f"n{i}"), range(12)))
    assert answers == [answer_text("cap")] * 12, "every request is answered, after waiting its turn"
    assert upstream.peak["cap"] == 2, f"the upstream held {upstream.peak['cap']} at once (max_concurrency 2)"


def test_a_full_queue_answers_429_with_retry_after(limited, gate):
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(ask, limited, "full-gated", "first")  # holds the one slot
        gate.wait_for(lambda: gate.requests("full-gated"))
        second = pool.submit(ask, limited, "full-gated", "second")  # waits in the queue of one
        time.sleep(0.3)  # let it reach the queue
        with pytest.raises(openai.RateLimitError) as refused:
            ask(limited, "full-gated", "third")
        gate.open_gate()
        assert first.result(10) == second.result(10) == answer_text("full")
    assert refused.value.status_code == 429
    assert refused.value.response.headers.get("retry-after") == "1"
    assert "provider_queue_full" in str(refused.value.body), refused.value.body


def test_waiting_past_first_token_answers_504(limited, gate):
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(ask, limited, "tight-gated", "first")
        gate.wait_for(lambda: gate.requests("tight-gated"))
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as expired:
            ask(limited, "tight-gated", "second")
        waited = time.monotonic() - started
        gate.open_gate()
        assert held.result(10) == answer_text("tight")
    assert expired.value.status_code == 504
    assert "first_token_timeout" in str(expired.value.body), expired.value.body
    assert 0.4 < waited < 5, f"gave up after {waited:.2f}s (first_token 0.5s)"
    assert len(gate.requests("tight-gated")) == 1, "the request that timed out never reached the upstream"


def test_a_client_leaving_frees_its_slot_at_once(limited, upstream):
    stream = sdk(limited).chat.completions.create(
        model="one-slow", messages=[{"role": "user", "content": "leave"}], stream=True
    )
    next(iter(stream))  # streaming: it holds provider one's only slot
    stream.close()
    started = time.monotonic()
    assert ask(limited, "one-echo") == answer_text("one")
    assert time.monotonic() - started < 5, "the next request waited for the slot the client gave up"


def test_a_failing_provider_is_passed_over_then_tried_after_its_cooldown(limited, upstream):
    for i in range(4):
        assert ask(limited, "f-fail-a", f"n{i}") == answer_text("b")
    assert providers_seen(upstream, "f-fail-a") == ["a", "b"] * 3 + ["b"], (
        "after 3 failures, a is passed over"
    )
    time.sleep(1.2)  # its cool-down (1 s) passes
    assert ask(limited, "f-fail-a", "after") == answer_text("b")
    assert providers_seen(upstream, "f-fail-a")[-2:] == ["a", "b"], "a is tried again after its cool-down"


def test_rpm_moves_requests_to_the_next_provider_or_waits(limited, upstream):
    for i in range(3):
        ask(limited, "rpm-echo", f"n{i}")
    assert providers_seen(upstream, "rpm-echo") == ["rpm1", "rpm1", "rpm2"], "rpm1 takes 2 a minute"
    assert ask(limited, "solo-echo") == answer_text("solo")
    with pytest.raises(openai.APIStatusError) as expired:
        ask(limited, "solo-echo", "again")
    assert expired.value.status_code == 504, "the next request waits for the minute, past first_token"
    assert len(upstream.requests("solo-echo")) == 1, "solo was sent one request in the minute (rpm 1)"


def test_tpm_counts_max_tokens_until_the_usage_is_known(limited, upstream):
    def ask_for(n: int) -> str:
        stream = sdk(limited).chat.completions.create(
            model="tok-busy", messages=[{"role": "user", "content": f"n{n}"}], max_tokens=60, stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(ask_for, range(2)))
    assert sorted(providers_seen(upstream, "tok-busy")) == ["tok1", "tok2"], "60 + 60 > tpm 100"
    ask_for(2)
    assert providers_seen(upstream, "tok-busy")[-1] == "tok1", "the first counts its usage now, not 60"


def test_round_robin_alternates_between_providers(serve, upstream):
    server = serve(
        config("round_robin", provider(upstream, "rr1", "rr-*"), provider(upstream, "rr2", "rr-*"))
    )
    for i in range(4):
        ask(server, "rr-echo", f"n{i}")
    assert providers_seen(upstream, "rr-echo") == ["rr1", "rr2", "rr1", "rr2"]


def test_least_busy_prefers_the_idle_provider(serve, gate):
    server = serve(config("least_busy", provider(gate, "lb1", "lb-*"), provider(gate, "lb2", "lb-*")))
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(ask, server, "lb-gated")
        gate.wait_for(lambda: gate.requests("lb-gated"))
        for i in range(2):
            ask(server, "lb-echo", f"n{i}")
        gate.open_gate()
        held.result(10)
    assert providers_seen(gate, "lb-gated") == ["lb1"], "both idle: the first configured"
    assert providers_seen(gate, "lb-echo") == ["lb2", "lb2"], "lb1 is busy with the gated answer"


def test_a_reload_keeps_the_counters_of_unchanged_providers():
    async def check() -> None:
        config = AIConfig.model_validate(
            {"providers": [{"name": "p", "type": "simulated", "max_concurrency": 1}], "routing": "least_busy"}
        )
        relay = Relay(config)
        before = relay.providers[0].capacity
        relay.configure(config.model_copy())
        assert relay.providers[0].capacity is before
        await relay.aclose()

    asyncio.run(check())
