"""Named api keys through the real server and the loopback upstream: rpm with Retry-After in both
dialects, models refused, a budget that holds against concurrent streams, a disconnect charged
what was relayed, limits shared by two Redis-backed instances, page prompts charged to the viewer
or the page key, spend on the page and in /metrics, and tokens never shown anywhere."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time

import anthropic
import httpx
import jwt
import openai
import pytest

from tests.support import REDIS_URL, free_port, run_async, sse_stream, wait_for
from tests.upstream import answer_text, relay_config

KEY = "sk-keys-0123456789abcdef0123456789"
TEAM = "tok-team-a-5f0c9e1d2b7a4c3e"
NARROW = "tok-narrow-8a7b6c5d4e3f2a1b"
PLAIN = "tok-plain-1234567890abcdef"
BUDGET_USD = 0.0001  # 100 micro-dollars: 3 reservations of ~31, or 4 answers of 23 (provider a's prices)
HI = [{"role": "user", "content": "hi"}]


def keys_config(upstream, keys: str, extra: str = "", auth: str = "") -> str:
    return relay_config(
        upstream.url,
        9,
        extra=f"""
auth:
  api_tokens: [{PLAIN}]
  {auth}
  api_keys:
{keys}
topics:
  spend: {{feed: spend}}
{extra}""",
    )


def openai_sdk(server, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=token, max_retries=0, timeout=20)


def spend_when(server, predicate, timeout: float = 15.0, viewer: str = "") -> dict:
    """The first spend report (the topic's latest, then live ones) that satisfies `predicate`."""
    seen = []
    deadline = time.monotonic() + timeout
    path = f"/sse/spend?replay=1&token={viewer}" if viewer else "/sse/spend?replay=1"
    with server.client(timeout=timeout) as http, sse_stream(http, path) as events:
        for sse in events:
            if sse.event != "message":
                continue
            data = json.loads(sse.data)
            seen.append(data)
            if predicate(data):
                return data
            if time.monotonic() > deadline:
                break
    raise AssertionError(f"no spend report matched within {timeout}s; saw {seen}")


def used(report: dict, key: str, field: str = "requests") -> float:
    return report["keys"].get(key, {}).get(field, 0)


def test_a_key_over_its_rpm_gets_429_with_retry_after_in_either_dialect(upstream, serve):
    keys = f"""
    - {{name: team-a, token: {TEAM}, rpm: 2}}
    - {{name: narrow, token: {NARROW}, rpm: 1, models: ["m-*"]}}
"""
    server = serve(keys_config(upstream, keys), env={"RELAY_TEST_KEY": KEY})
    client = openai_sdk(server, TEAM)
    for _ in range(2):
        answer = client.chat.completions.create(model="t-echo", messages=HI)
        assert answer.choices[0].message.content == answer_text("a")
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="t-echo", messages=HI)
    retry_after = int(refused.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 60, retry_after
    assert refused.value.code == "rate_limited" and "team-a" in refused.value.message
    assert TEAM not in refused.value.message

    # Anthropic-shaped on /v1/messages, the token in x-api-key as that SDK sends it
    claude = anthropic.Anthropic(base_url=server.url, api_key=NARROW, max_retries=0, timeout=20)
    claude.messages.create(model="m-echo", max_tokens=20, messages=HI)
    with pytest.raises(anthropic.RateLimitError) as limited:
        claude.messages.create(model="m-echo", max_tokens=20, messages=HI)
    assert limited.value.body["error"]["type"] == "rate_limit_error", limited.value.body
    assert 1 <= int(limited.value.response.headers["retry-after"]) <= 60

    # plain api_tokens keep working, without limits
    plain = openai_sdk(server, PLAIN)
    for _ in range(4):
        plain.chat.completions.create(model="t-echo", messages=HI)


# What one request on HI costs the tpm window: the prompt estimate (its messages' JSON / 4) is
# 11 tokens; admission holds that plus max_tokens, and settles at the upstream's usage, 11 + 6.
PROMPT, USED = 11, 17


@pytest.mark.parametrize("broker", ["memory", "redis"])
def test_a_key_over_its_tpm_gets_429_rate_limited_with_retry_after(request, upstream, serve, broker):
    keys = f"    - {{name: team-a, token: {TEAM}, tpm: 60}}\n"
    config = keys_config(upstream, keys)
    if broker == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        config = config.replace(
            "server: {max_body: 65536}",
            f"server: {{max_body: 65536}}\nbroker: {{url: '{REDIS_URL}', prefix: {prefix}}}",
        )
    server = serve(config, env={"RELAY_TEST_KEY": KEY})
    client = openai_sdk(server, TEAM)
    for _ in range(2):  # each holds 11 + 20 while admitted, then its usage: 17, 34 used
        client.chat.completions.create(model="t-echo", messages=HI, max_tokens=20)
    with pytest.raises(openai.RateLimitError) as refused:  # 34 + 31 is over 60
        client.chat.completions.create(model="t-echo", messages=HI, max_tokens=20)
    assert refused.value.code == "rate_limited" and "over its tpm" in refused.value.message, (
        refused.value.message
    )
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= 60, refused.value.response.headers
    # what fits in what is left is still admitted: 34 + 11 + 15 = 60
    client.chat.completions.create(model="t-echo", messages=HI, max_tokens=60 - 2 * USED - PROMPT)


def test_a_keys_default_max_tokens_is_reserved_when_a_request_sets_none(upstream, serve):
    keys = f"""
    - {{name: deep, token: {TEAM}, tpm: 40, default_max_tokens: 100}}
    - {{name: shallow, token: {NARROW}, tpm: 40, default_max_tokens: 20}}
"""
    server = serve(keys_config(upstream, keys), env={"RELAY_TEST_KEY": KEY})
    deep, shallow = openai_sdk(server, TEAM), openai_sdk(server, NARROW)
    with pytest.raises(openai.RateLimitError) as refused:  # 11 + 100 held is over 40
        deep.chat.completions.create(model="t-echo", messages=HI)
    assert refused.value.code == "rate_limited", refused.value.message
    deep.chat.completions.create(model="t-echo", messages=HI, max_tokens=20)  # 11 + 20 fits
    shallow.chat.completions.create(model="t-echo", messages=HI)  # 11 + 20 fits, not 11 + 1024


def test_a_model_outside_the_keys_patterns_is_forbidden(upstream, serve):
    keys = f"    - {{name: narrow, token: {NARROW}, models: ['t-echo']}}\n"
    server = serve(keys_config(upstream, keys), env={"RELAY_TEST_KEY": KEY})
    client = openai_sdk(server, NARROW)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model="t-bytewise", messages=HI)
    assert "may not use model 't-bytewise'" in refused.value.message
    assert client.chat.completions.create(model="t-echo", messages=HI).choices


async def concurrent_streams(url: str, count: int, on_all_answered) -> list[int]:
    """`count` streamed requests at once; each one's status; `on_all_answered()` runs once every
    response has its status (the admitted ones are then all in flight)."""
    statuses: list[int] = []
    answered = asyncio.Event()
    body = {"model": "t-gated", "messages": HI, "stream": True, "max_tokens": 10}
    headers = {"Authorization": f"Bearer {TEAM}"}

    async def one(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
            statuses.append(response.status_code)
            if len(statuses) == count:
                answered.set()
            if response.status_code == 429:
                assert response.headers["retry-after"] == "1", "room may come back once those settle"
                error = json.loads(await response.aread())["error"]
                assert error["code"] == "budget_exceeded", error
            await response.aread()

    async with httpx.AsyncClient(
        base_url=url, timeout=30, limits=httpx.Limits(max_connections=100)
    ) as client:
        tasks = [asyncio.create_task(one(client)) for _ in range(count)]
        async with asyncio.timeout(20):
            await answered.wait()
        on_all_answered()
        await asyncio.gather(*tasks)
    return statuses


def test_twenty_concurrent_streams_cannot_together_slip_past_a_budget(upstream, serve):
    keys = f"    - {{name: team-a, token: {TEAM}, daily_usd: {BUDGET_USD}}}\n"
    server = serve(keys_config(upstream, keys), env={"RELAY_TEST_KEY": KEY})
    upstream.open_gate(False)
    try:
        statuses = run_async(concurrent_streams(server.url, 20, upstream.open_gate))
    finally:
        upstream.open_gate()
    admitted = statuses.count(200)
    assert admitted >= 1 and admitted + statuses.count(429) == 20, statuses
    report = spend_when(server, lambda r: used(r, "team-a") == admitted)
    spent = report["keys"]["team-a"]
    # Every answer's real cost is known (usage 11 + 6 tokens at 1 and 2 USD per million)
    assert spent["cost_usd"] == pytest.approx(admitted * 23e-6), spent
    # reservations held the budget while the answers were in flight: no overshoot at all
    assert spent["cost_usd"] <= BUDGET_USD, f"{admitted} admitted at once spent {spent['cost_usd']}"
    assert spent["held_usd"] == 0, "every reservation was settled"
    assert report["models"]["t-*"]["requests"] == admitted, report


def test_a_disconnect_mid_stream_is_charged_the_tokens_relayed(upstream, serve):
    keys = f"    - {{name: team-a, token: {TEAM}, daily_usd: 1.0}}\n"
    server = serve(keys_config(upstream, keys), env={"RELAY_TEST_KEY": KEY})
    client = openai_sdk(server, TEAM)
    received = ""
    stream = client.chat.completions.create(model="t-slow", messages=HI, stream=True)
    for chunk in stream:
        received += (chunk.choices[0].delta.content or "") if chunk.choices else ""
        if received.count("t") >= 5:
            break
    stream.close()
    report = spend_when(server, lambda r: used(r, "team-a") == 1)
    spent, last = report["keys"]["team-a"], report["last"]
    # no usage from this provider: estimated from the text relayed, a few tokens more at most
    # (those relayed while the disconnect was noticed)
    relayed = spent["completion_tokens"]
    assert len(received) / 4 <= relayed <= (len(received) + 4 * 4) / 4, (received, spent)
    assert spent["prompt_tokens"] > 0 and spent["held_usd"] == 0, spent
    assert last["outcome"] == "cancelled" and last["key"] == "team-a", last
    assert spent["cost_usd"] == pytest.approx((spent["prompt_tokens"] + 2 * relayed) / 1e6)


def test_two_redis_instances_share_one_keys_limits(upstream, redis_prefix, serve):
    keys = f"    - {{name: team-a, token: {TEAM}, rpm: 3}}\n"
    config = keys_config(upstream, keys).replace(
        "server: {max_body: 65536}",
        f"server: {{max_body: 65536}}\nbroker: {{url: '{REDIS_URL}', prefix: {redis_prefix}}}",
    )
    one = serve(config, env={"RELAY_TEST_KEY": KEY})
    two = serve(config, env={"RELAY_TEST_KEY": KEY})
    openai_sdk(one, TEAM).chat.completions.create(model="t-echo", messages=HI)
    openai_sdk(one, TEAM).chat.completions.create(model="t-echo", messages=HI)
    openai_sdk(two, TEAM).chat.completions.create(model="t-echo", messages=HI)
    for server in (two, one):
        with pytest.raises(openai.RateLimitError) as refused:
            openai_sdk(server, TEAM).chat.completions.create(model="t-echo", messages=HI)
        assert 1 <= int(refused.value.response.headers["retry-after"]) <= 60
    # the day's spend is shared too: either instance reports all three
    assert used(spend_when(two, lambda r: used(r, "team-a") == 3), "team-a", "completion_tokens") == 18
    # and `dashboard keys` reads it from Redis
    cli = [sys.executable, "-m", "dashboard", "keys", "--config", str(one.config)]
    printed = subprocess.run(cli, capture_output=True, text=True, env={**os.environ, "RELAY_TEST_KEY": KEY})
    assert printed.returncode == 0, printed.stderr
    assert re.search(r"team-a +3 req, 51 tokens, 0\.000069 USD; rpm 3", printed.stdout), printed.stdout
    assert TEAM not in printed.stdout


def test_dashboard_keys_reads_a_memory_brokers_spend_from_the_running_server(upstream, serve):
    """With memory://, only the server holds the spend: `dashboard keys` reads its spend topic, as a
    viewer of that topic alone when topics are private."""
    port = free_port()
    config = keys_config(
        upstream,
        f"    - {{name: team-a, token: {TEAM}, rpm: 5}}\n",
        auth="viewers: {secret: viewer-secret-0123456789abcdef0123}",
    ).replace("server: {max_body: 65536}", f"server: {{max_body: 65536, port: {port}}}")
    server = serve(config, port=port, env={"RELAY_TEST_KEY": KEY})
    openai_sdk(server, TEAM).chat.completions.create(model="t-echo", messages=HI)
    cli = [sys.executable, "-m", "dashboard", "keys", "--config", str(server.config)]
    env = {**os.environ, "RELAY_TEST_KEY": KEY}
    deadline = time.monotonic() + 15
    while True:  # the spend topic publishes the request once it has settled
        printed = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=60)
        assert printed.returncode == 0, printed.stderr
        if re.search(r"team-a +1 req", printed.stdout) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert re.search(r"team-a +1 req, \d+ tokens, 0\.0000\d+ USD; rpm 5", printed.stdout), printed.stdout
    assert TEAM not in printed.stdout


def test_page_prompts_are_charged_to_the_viewer_or_else_the_page_key(upstream, serve):
    secret = "viewer-secret-0123456789abcdef0123"
    keys = f"    - {{name: page-key, token: {TEAM}, rpm: 1}}\n"
    extra = "  chat: {feed: ai, options: {model: t-echo, max_tokens: 20, page_key: page-key}}\n"
    config = keys_config(upstream, keys, extra, auth=f"viewers: {{secret: {secret}}}")
    server = serve(config, env={"RELAY_TEST_KEY": KEY})

    def viewer(claims: dict) -> str:
        return jwt.encode({"topics": ["*"], "exp": int(time.time()) + 600, **claims}, secret, "HS256")

    def prompt_as(claims: dict) -> int:
        token = viewer(claims)
        with server.client(follow_redirects=True) as page:
            html = page.get(f"/?token={token}").text
            proof = re.search(r'data-prompt-proof="([^"]+)"', html).group(1)
            headers = {"X-Dashboard-Prompt": proof}
            return page.post("/feeds/chat/prompt", json={"prompt": "hi"}, headers=headers).status_code

    assert prompt_as({"sub": "alice"}) == 202
    assert prompt_as({}) == 202
    both = lambda r: used(r, "alice") == 1 and used(r, "page-key") == 1  # noqa: E731
    report = spend_when(server, both, viewer=viewer({}))
    assert set(report["keys"]) == {"alice", "page-key"}, report
    # the page key's rpm of 1 now holds the next anonymous prompt: the panel hears why
    with server.client() as http, sse_stream(http, f"/sse/chat?replay=0&token={viewer({})}") as events:
        assert prompt_as({}) == 202
        error = next(json.loads(e.data) for e in events if e.event == "error")
    assert error["code"] == "rate_limited" and "page-key" in error["message"], error
    # alice has the page key's limits under her own name: her rpm is her own
    assert prompt_as({"sub": "alice"}) == 202


def test_no_token_reaches_metrics_logs_pages_or_spend(upstream, serve):
    keys = f"    - {{name: team-a, token: {TEAM}, rpm: 1}}\n"
    server = serve(keys_config(upstream, keys), env={"RELAY_TEST_KEY": KEY})
    client = openai_sdk(server, TEAM)
    client.chat.completions.create(model="t-echo", messages=HI)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="t-echo", messages=HI)
    with pytest.raises(openai.AuthenticationError):
        openai_sdk(server, TEAM + "x").chat.completions.create(model="t-echo", messages=HI)
    report = spend_when(server, lambda r: used(r, "team-a") == 1)
    with server.client() as http:
        metrics = http.get("/metrics").text
        shown = [metrics, http.get("/").text, http.get("/api/topics").text, json.dumps(report)]
    assert re.search(r'dashboard_ai_key_requests_total\{key="team-a",outcome="ok"\} 1\.0', metrics), metrics
    assert re.search(r'dashboard_ai_key_refused_total\{key="team-a",reason="rpm"\} 1\.0', metrics)
    assert 'dashboard_ai_key_cost_usd_total{key="team-a"} 2.3e-05' in metrics
    server.stop()
    for text in [*shown, server.output()]:
        for secret in (TEAM, PLAIN, KEY):
            assert secret not in text


def test_the_spend_panel_updates_as_requests_settle(upstream, serve, open_page):
    keys = f"    - {{name: team-a, token: {TEAM}, daily_usd: 1.0}}\n"
    server = serve(keys_config(upstream, keys), env={"RELAY_TEST_KEY": KEY})
    opened = open_page(server.url)
    spend = opened.page.locator("section.panel:has(h2:text-is('spend'))")
    spend.locator("table").first.wait_for()  # a table by default: the day's totals
    assert "team-a" not in spend.text_content()
    keys = spend.locator("table:has(caption:text-is('keys'))")
    cells = "t => [...t.rows].map(r => [...r.cells].map(c => c.textContent))"
    client = openai_sdk(server, TEAM)
    client.chat.completions.create(model="t-echo", messages=HI)
    keys.wait_for()
    assert wait_for("team-a's first request", lambda: keys.evaluate(cells)[1][:2] == ["team-a", "1"], 15)
    client.chat.completions.create(model="t-echo", messages=HI)
    assert wait_for("team-a's second request", lambda: keys.evaluate(cells)[1][:2] == ["team-a", "2"], 15)
    assert keys.evaluate(cells) == [
        ["name", "requests", "prompt_tokens", "completion_tokens", "cost_usd", "held_usd"],
        ["team-a", "2", "22", "12", "$0.000046", "$0.0000"],
    ]
    opened.screenshot("spend-panel.png")
    assert TEAM not in opened.page.content()


def test_a_stream_the_upstream_breaks_off_gives_its_reservation_back(upstream, serve):
    keys = f"    - {{name: team-a, token: {TEAM}, daily_usd: 1.0}}\n"
    server = serve(keys_config(upstream, keys), env={"RELAY_TEST_KEY": KEY})
    with pytest.raises(openai.APIError):
        list(openai_sdk(server, TEAM).chat.completions.create(model="t-error-mid", messages=HI, stream=True))
    report = spend_when(server, lambda r: used(r, "team-a") == 1)
    assert report["keys"]["team-a"]["held_usd"] == 0 and report["last"]["outcome"] == "error", report
    # "[a] Hello from" was relayed before the error: charged as estimated text
    assert report["keys"]["team-a"]["completion_tokens"] == 4, report


def test_a_messages_stream_broken_off_is_charged_the_text_it_relayed(upstream, serve):
    """Anthropic's stream counts usage from its start (one output token in message_start): a stream
    that breaks off before its end is charged the text relayed, as an OpenAI one is."""
    keys = f"    - {{name: team-a, token: {TEAM}, daily_usd: 1.0}}\n"
    server = serve(keys_config(upstream, keys), env={"RELAY_TEST_KEY": KEY})
    body = {"model": "m-error-mid", "max_tokens": 50, "messages": HI, "stream": True}
    with server.client() as http:
        answer = http.post("/v1/messages", json=body, headers={"x-api-key": TEAM})
    assert answer.status_code == 200 and b"Hello" in answer.content and b"event: error" in answer.content
    report = spend_when(server, lambda r: used(r, "team-a") == 1)
    assert report["keys"]["team-a"]["held_usd"] == 0 and report["last"]["outcome"] == "error", report
    # "[a] Hello from" was relayed before the error: charged as estimated text, not message_start's 1
    assert report["keys"]["team-a"]["completion_tokens"] == 4, report
    assert report["keys"]["team-a"]["prompt_tokens"] == 11, "the prompt as the provider counted it"
