"""The `ai` feed end to end: prompts become prompt/token/done events on the topic, late viewers get
the answer so far, stop cancels, the queue is bounded, and only the page (with the proof it was
given) or a token may prompt."""

from __future__ import annotations

import json
import re

import pytest

from tests.support import ServerFactory, read_events, sse_stream
from tests.upstream import answer_text, relay_config

KEY = "sk-feed-0123456789abcdef0123456789"
TOPICS = """
topics:
  chat: {feed: ai, options: {model: t-echo, system: "Be brief.", temperature: 0.2, max_tokens: 50}}
  slow: {feed: ai, history: 5000, options: {model: t-slow, queue: 1}}
  sim: {feed: ai, options: {model: simulated}}
  broken: {feed: ai, options: {model: t-error-mid}}
  sched: {feed: ai, options: {model: t-echo, schedule: {every: 600, prompt: "scheduled hello"}}}
"""


@pytest.fixture(scope="module")
def server(upstream, tmp_path_factory):
    factory = ServerFactory(tmp_path_factory.mktemp("aifeed"))
    yield factory(relay_config(upstream.url, 9, extra=TOPICS), env={"RELAY_TEST_KEY": KEY})
    factory.close()


def until_done(events, completion: str) -> list:
    """Events of one completion, up to its done or error event."""
    out = []
    for sse in events:
        if not sse.data or sse.event == "status":
            continue
        data = json.loads(sse.data)
        if data.get("completion") != completion:
            continue
        out.append((sse.event, data))
        if sse.event in ("done", "error"):
            return out
    raise AssertionError(f"stream ended before {completion} finished: {out}")


def test_a_prompt_streams_prompt_tokens_and_done_with_measurements(server, upstream):
    with server.client() as http, sse_stream(http, "/sse/chat?replay=0") as events:
        response = http.post("/feeds/chat/prompt", json={"prompt": "Say hello"})
        assert response.status_code == 202, response.text
        completion = response.json()["completion"]
        got = until_done(events, completion)
    kinds = [k for k, _ in got]
    assert kinds[0] == "prompt" and kinds[-1] == "done" and set(kinds[1:-1]) == {"token"}
    assert got[0][1]["prompt"] == "Say hello" and got[0][1]["model"] == "t-echo"
    assert "".join(d["text"] for k, d in got if k == "token") == answer_text("a")
    done = got[-1][1]
    assert done["stopped"] is False and done["finish_reason"] == "stop" and done["simulated"] is False
    assert done["provider"] == "a"
    assert done["usage"] == {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}
    assert done["cost_usd"] == pytest.approx((11 * 1.0 + 6 * 2.0) / 1e6)
    assert done["ttft_ms"] > 0 and 0 <= done["relay_overhead_ms"] < done["ttft_ms"]
    assert done["duration_ms"] >= done["ttft_ms"]
    sent = upstream.requests("t-echo")[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello"},
    ]
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 50 and sent["stream"] is True


def test_the_simulated_provider_answers_offline_and_is_labelled(server):
    with server.client() as http, sse_stream(http, "/sse/sim?replay=0") as events:
        completion = http.post("/feeds/sim/prompt", json={"prompt": "hi"}).json()["completion"]
        got = until_done(events, completion)
    done = got[-1][1]
    assert done["simulated"] is True and done["provider"] == "simulated" and done["tokens_per_s"] > 0
    assert "simulated provider" in "".join(d["text"] for k, d in got if k == "token")


def test_a_schedule_prompts_by_itself(server):
    with server.client() as http, sse_stream(http, "/sse/sched") as events:
        first = next(e for e in events if e.event == "prompt")
        prompt = json.loads(first.data)
        assert prompt["prompt"] == "scheduled hello"
        got = until_done(events, prompt["completion"])
    assert got[-1][0] == "done" and got[-1][1]["finish_reason"] == "stop"


def test_the_offline_defaults_have_an_ai_panel_on_the_simulated_provider():
    from dashboard.config import DEFAULT_CONFIG, load_config, parse_config
    from tests.support import ROOT

    for config in (parse_config(DEFAULT_CONFIG), load_config(ROOT / "config.yaml")):
        assistant = config.topics["assistant"]
        assert assistant.feed == "ai" and assistant.feed_class.default_view == "chat"
        model = assistant.options["model"]
        provider = next(p for p in config.ai.providers if p.models == [model])
        assert provider.type == "simulated" and provider.api_key is None


def test_an_upstream_error_becomes_an_error_event(server):
    with server.client() as http, sse_stream(http, "/sse/broken?replay=0") as events:
        completion = http.post("/feeds/broken/prompt", json={"prompt": "hi"}).json()["completion"]
        got = until_done(events, completion)
    kind, data = got[-1]
    assert kind == "error" and data["code"] == "upstream_stream_error" and "mid-stream" in data["detail"]
    message = data["message"]
    assert message.startswith("The AI provider stopped with an error") and "Try again" in message
    assert "'a'" not in data["message"], "the person who asked is not told which internal provider failed"


def test_late_viewer_gets_the_answer_so_far_then_stop_cancels(server, upstream):
    with server.client() as http:
        with sse_stream(http, "/sse/slow?replay=0") as events:
            completion = http.post("/feeds/slow/prompt", json={"prompt": "go on"}).json()["completion"]
            tokens = 0
            for sse in events:
                if sse.event == "token":
                    tokens += 1
                    if tokens == 3:
                        break
        # a viewer arriving now is replayed the prompt and the tokens so far, then sees it live
        late = [e for e in read_events(http, "/sse/slow", 12) if completion in e.data]
        assert late[0].event == "prompt" and json.loads(late[0].data)["completion"] == completion
        text = "".join(json.loads(e.data)["text"] for e in late[1:] if e.event == "token")
        assert text.startswith("t0 t1 t2 "), text
        with sse_stream(http, "/sse/slow?replay=0") as events:
            stopped = http.post("/feeds/slow/stop")
            assert stopped.status_code == 200 and stopped.json() == {"stopped": completion}
            done = until_done(events, completion)[-1]
        assert done[0] == "done" and done[1]["stopped"] is True and done[1]["finish_reason"] is None
        seen = upstream.wait_for(lambda: [s for s in upstream.requests("t-slow") if s.closed])
        assert seen, "the upstream request was closed"
        assert http.post("/feeds/slow/stop").json() == {"stopped": None}


def test_a_full_queue_answers_429(server):
    with server.client() as http:
        first = http.post("/feeds/slow/prompt", json={"prompt": "one"}).json()["completion"]
        with sse_stream(http, "/sse/slow?replay=1") as events:
            for sse in events:
                if sse.event == "token" and json.loads(sse.data)["completion"] == first:
                    break
        assert http.post("/feeds/slow/prompt", json={"prompt": "two"}).status_code == 202
        full = http.post("/feeds/slow/prompt", json={"prompt": "three"})
        assert full.status_code == 429, full.text
        assert full.json()["error"]["code"] == "queue_full" and "queue" in full.json()["error"]["message"]
        assert http.post("/feeds/slow/stop").json() == {"stopped": first}
        assert http.post("/feeds/slow/stop").json()["stopped"] not in (None, first)  # "two" ran next


def test_bad_prompts_are_json_errors(server):
    with server.client() as http:
        assert http.post("/feeds/chat/prompt", content=b"{").status_code == 400
        assert http.post("/feeds/chat/prompt", json={"prompt": ""}).status_code == 400
        assert http.post("/feeds/chat/prompt", json={"text": "hi"}).status_code == 400
        big = http.post("/feeds/chat/prompt", json={"prompt": "x" * 70_000})
        assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"


def test_prompts_from_another_site_are_refused(server):
    with server.client() as http:
        cross = http.post(
            "/feeds/chat/prompt", json={"prompt": "hi"}, headers={"Origin": "https://evil.test"}
        )
        assert cross.status_code == 403
        fetch = http.post("/feeds/chat/stop", headers={"Sec-Fetch-Site": "cross-site"})
        assert fetch.status_code == 403


def test_with_api_tokens_a_token_or_the_proof_the_page_was_given_may_prompt(upstream, serve):
    server = serve(
        relay_config(upstream.url, 9, extra="auth: {api_tokens: [dash-token]}\n" + TOPICS),
        env={"RELAY_TEST_KEY": KEY},
    )
    host = server.url.removeprefix("http://")
    with server.client() as http:
        assert http.post("/feeds/chat/prompt", json={"prompt": "hi"}).status_code == 401
        bad = http.post("/feeds/chat/prompt", json={"prompt": "hi"}, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
        token = {"Authorization": "Bearer dash-token"}
        assert http.post("/feeds/chat/prompt", json={"prompt": "hi"}, headers=token).status_code == 202
        # Headers any script can send prove nothing.
        forged = {"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
        assert http.post("/feeds/chat/prompt", json={"prompt": "hi"}, headers=forged).status_code == 401
        assert http.post("/feeds/chat/stop", headers={"Origin": f"http://{host}"}).status_code == 401
        other = {"Origin": "http://elsewhere.test", "Sec-Fetch-Site": "cross-site"}
        assert http.post("/feeds/chat/prompt", json={"prompt": "hi"}, headers=other).status_code == 403
        assert "dash-token" not in http.get("/").text
        assert http.cookies.get("dashboard_session"), "the page sets the session its proof is bound to"

    with server.client() as page_browser:  # the page's own browser: its cookie and its proof
        proof = re.search(r'data-prompt-proof="([^"]+)"', page_browser.get("/").text).group(1)
        proved = {"X-Dashboard-Prompt": proof, **forged}
        assert (
            page_browser.post("/feeds/chat/prompt", json={"prompt": "hi"}, headers=proved).status_code == 202
        )
        assert page_browser.post("/feeds/chat/stop", headers=proved).status_code == 200
    with server.client() as script:  # the proof without the session cookie it is bound to
        assert script.post("/feeds/chat/prompt", json={"prompt": "hi"}, headers=proved).status_code == 401
        script.get("/")  # a session of its own does not make another page's proof its own
        assert script.post("/feeds/chat/prompt", json={"prompt": "hi"}, headers=proved).status_code == 401
