"""GET /metrics: Prometheus text that prometheus-client's parser reads, with counters that move, and the
per-key series shown only to whoever may see the spend."""

from __future__ import annotations

import re
import time

import jwt
from prometheus_client.parser import text_string_to_metric_families

from tests.support import read_events, sse_stream

CONFIG = """
auth: {publish_tokens: [tok]}
supervisor: {initial_backoff: 0.05, max_backoff: 0.1}
topics:
  inbox: {feed: notifications}
  flaky: {feed: "tests.plugin_feeds:Flaky"}
  ai: {feed: "tests.plugin_feeds:TtftProbe", options: {interval: 0.5}}
"""

AUTH = {"Authorization": "Bearer tok"}


def scrape(client) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels): value}, read by prometheus-client's parser."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{key} not in /metrics; have {sorted(k for k in samples if k[0] == name)}"
    return samples[key]


def test_metrics_parse_and_counters_move_when_events_flow(serve):
    server = serve(CONFIG)
    with server.client() as client, server.client() as reader:
        before = scrape(client)
        assert value(before, "dashboard_events_published_total", topic="inbox") == 0
        assert value(before, "dashboard_topic_subscribers", topic="inbox") == 0
        with sse_stream(reader, "/sse/inbox") as events:
            for n in range(3):
                answer = client.post("/publish/inbox", json={"title": f"n{n}"}, headers=AUTH)
                assert answer.status_code == 202
            assert sum(1 for _, e in zip(range(3), (e for e in events if e.id), strict=False)) == 3
            during = scrape(client)
        deadline = time.monotonic() + 10
        while value(after := scrape(client), "dashboard_topic_subscribers", topic="inbox") != 0:
            assert time.monotonic() < deadline, "the closed stream is still counted as a subscriber"
            time.sleep(0.05)
    assert value(during, "dashboard_topic_subscribers", topic="inbox") == 1
    assert value(during, "dashboard_events_published_total", topic="inbox") == 3
    assert value(during, "dashboard_events_delivered_total", topic="inbox") == 3
    assert value(during, "dashboard_events_dropped_total", topic="inbox") == 0
    # A failing feed's restarts are counted.
    assert value(after, "dashboard_feed_restarts_total", topic="flaky") >= 1
    assert value(after, "dashboard_feed_running", topic="inbox") == 0  # push-only: no task runs


def test_http_requests_are_counted_by_route_template_and_status(serve):
    server = serve(CONFIG)
    with server.client() as client:
        with sse_stream(client, "/sse/inbox"):
            pass
        client.post("/publish/inbox", json={"title": "x"})  # 401
        client.post("/publish/inbox", json={"title": "x"}, headers=AUTH)  # 202
        client.get("/no/such/page")  # 404, no route
        client.get("/sse/nope")  # 404 on a known route
        samples = scrape(client)
    requests = "dashboard_http_requests_total"
    assert value(samples, requests, method="GET", route="/sse/{topic}", status="200") == 1
    assert value(samples, requests, method="GET", route="/sse/{topic}", status="404") == 1
    assert value(samples, requests, method="POST", route="/publish/{topic}", status="401") == 1
    assert value(samples, requests, method="POST", route="/publish/{topic}", status="202") == 1
    assert value(samples, requests, method="GET", route="<unmatched>", status="404") == 1
    routes = {dict(labels)["route"] for name, labels in samples if name == requests}
    assert not any("inbox" in r or "nope" in r or "no/such" in r for r in routes), routes


def test_metrics_include_the_default_registry(serve):
    """Histograms other parts of the server register (the AI relay's) are served too."""
    server = serve(CONFIG)
    with server.client() as client:
        read_events(client, "/sse/ai", 1)
        samples = scrape(client)
    count = value(
        samples, "dashboard_ai_time_to_first_token_seconds_count", provider="probe", model="probe-model"
    )
    assert count >= 1
    assert any(name.startswith("process_") for name, _ in samples)  # prometheus-client's own collectors


SIMULATED = """
ai:
  providers:
    - {name: sim, type: simulated, models: [simulated], simulation: {first_token_ms: 0, tokens_per_s: 10000}}
"""
TEAM = "tok-team-metrics-0123456789abcdef"
PLAIN = "tok-plain-metrics-0123456789abcdef"
VIEWER_SECRET = "viewer-secret-0123456789abcdef0123456789"


def key_series(text: str) -> list[str]:
    """The per-key samples of a /metrics answer (`dashboard_ai_key_...{key=...}`)."""
    return re.findall(r"^dashboard_ai_key_\w+\{[^}]*\}", text, re.MULTILINE)


def complete(client, token: str) -> None:
    body = {"model": "simulated", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    answer = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text


def test_per_key_series_are_shown_only_to_api_tokens_and_readers_of_the_spend_topic(serve):
    config = f"""
auth:
  api_tokens: [{PLAIN}]
  api_keys: [{{name: team-a, token: {TEAM}}}]
  viewers: {{secret: {VIEWER_SECRET}}}
topics:
  spend: {{feed: spend}}
  lobby: {{feed: demo, public: true}}
{SIMULATED}"""
    server = serve(config)

    def viewer(topics: list[str]) -> dict[str, str]:
        claims = {"topics": topics, "exp": int(time.time()) + 600}
        return {"Authorization": f"Bearer {jwt.encode(claims, VIEWER_SECRET, algorithm='HS256')}"}

    with server.client() as http:
        complete(http, TEAM)
        anonymous = http.get("/metrics").text
        assert key_series(anonymous) == [], anonymous
        assert 'topic="spend"' not in anonymous and 'topic="lobby"' in anonymous
        assert key_series(http.get("/metrics", headers=viewer(["lobby"])).text) == []
        wrong = http.get("/metrics", headers={"Authorization": "Bearer not-a-token"})
        assert wrong.status_code == 401, wrong.text
        for shown_to in (
            {"Authorization": f"Bearer {PLAIN}"},  # an api token, as the relay takes it
            {"x-api-key": TEAM},
            viewer(["spend"]),  # a viewer of the spend topic, which shows the same numbers
        ):
            text = http.get("/metrics", headers=shown_to).text
            assert 'dashboard_ai_key_requests_total{key="team-a",outcome="ok"}' in text, (shown_to, text)
        # an api token opens the per-key series, not the private topics
        assert 'topic="spend"' not in http.get("/metrics", headers={"x-api-key": TEAM}).text
        assert 'topic="spend"' in http.get("/metrics", headers=viewer(["spend"])).text


def test_with_api_tokens_and_no_spend_topic_per_key_series_need_a_token(serve):
    server = serve(f"auth: {{api_keys: [{{name: team-a, token: {TEAM}}}]}}\ntopics: {{}}\n{SIMULATED}")
    with server.client() as http:
        complete(http, TEAM)
        assert key_series(http.get("/metrics").text) == []
        shown = http.get("/metrics", headers={"Authorization": f"Bearer {TEAM}"}).text
        assert 'dashboard_ai_key_requests_total{key="team-a",outcome="ok"}' in shown, shown


def test_without_auth_per_key_series_stay_open_on_loopback(serve):
    server = serve(f"topics: {{}}\n{SIMULATED}")
    series = 'dashboard_ai_key_requests_total{key="(no key)",outcome="ok"}'
    with server.client() as http:
        complete(http, "anything")
        deadline = time.monotonic() + 10  # counted once settled, which may end after the answer
        while series not in (text := http.get("/metrics").text) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert series in text, text


def test_under_two_workers_each_scrape_counts_the_streams_of_both(redis_prefix, serve):
    import threading

    import httpx

    from tests.support import REDIS_URL

    server = serve(
        f"broker: {{url: {REDIS_URL}, prefix: {redis_prefix}}}\n"
        "topics: {tick: {feed: demo, options: {mode: walk, interval: 0.1}}}\n",
        args=["--workers", "2"],
    )
    stop = threading.Event()

    def hold() -> None:  # one stream on its own connection: the kernel picks its worker
        with httpx.Client(timeout=30) as client, client.stream("GET", f"{server.url}/sse/tick") as response:
            for _ in response.iter_lines():
                if stop.is_set():
                    return

    for _ in range(8):
        threading.Thread(target=hold, daemon=True).start()
    counted: dict[str, float] = {}  # the worker that answered a scrape -> the subscribers it counted
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (len(counted) == 2 and set(counted.values()) == {8}):
            with httpx.Client(base_url=server.url, timeout=10) as client:  # a new connection: any worker
                samples = scrape(client)
                instance = client.get("/healthz").json()["instance"]  # the same connection: that worker
            counted[instance] = value(samples, "dashboard_topic_subscribers", topic="tick")
            time.sleep(0.2)
        assert len(counted) == 2 and set(counted.values()) == {8}, counted
        assert value(samples, "dashboard_events_published_total", topic="tick") > 0
        assert (
            value(samples, "dashboard_http_requests_total", method="GET", route="/metrics", status="200") > 1
        )
    finally:
        stop.set()
