"""Reconnect storms: thousands of streams opening at once are served, or shed with Retry-After."""

from __future__ import annotations

from collections import Counter

from tests.support import REDIS_URL, open_streams, raise_open_files_limit, read_events, run_async, wait_for
from tests.test_scale_out import leader_of

STREAMS = 2000


def storm_config(prefix: str) -> str:
    return f"""
    server: {{max_streams_per_client: {STREAMS}}}  # every stream comes from this one address
    broker: {{url: "{REDIS_URL}", prefix: {prefix}}}
    topics:
      count: {{feed: "tests.scale_feed:Counter", options: {{interval: 0.05}}}}
    """


def test_a_storm_of_streams_across_two_instances_is_served_with_exact_resumes(redis_prefix, serve):
    servers = [serve(storm_config(redis_prefix)), serve(storm_config(redis_prefix))]
    wait_for("one leader", lambda: leader_of(servers, "count"))
    with servers[0].client() as client:
        known = [int(e.id) for e in read_events(client, "/sse/count", 30)]
    # Half resume at an id from history (each expects the next one), half start live.
    requests, expected = [], {}
    for i in range(STREAMS):
        url = servers[i % 2].url
        if i % 4 < 2:
            k = i % (len(known) - 1)
            requests.append((url, "/sse/count", known[k]))
            expected[i] = known[k + 1]
        else:
            requests.append((url, "/sse/count?replay=0", None))
    raise_open_files_limit(STREAMS + 200)
    starts, took = run_async(open_streams(requests, timeout=60))
    statuses = Counter(s.status for s in starts)
    assert statuses == {200: STREAMS}, f"statuses of {STREAMS} streams opened at once: {dict(statuses)}"
    wrong = {i: (starts[i].first_id, want) for i, want in expected.items() if starts[i].first_id != want}
    assert not wrong, (
        f"{len(wrong)} resumers did not continue at their id (got, wanted): {list(wrong.items())[:5]}"
    )
    assert all(s.first_id and s.first_id > known[-1] for i, s in enumerate(starts) if i not in expected)
    for server in servers:
        with server.client() as client:
            status = client.get("/api/topics").json()["topics"]["count"]["status"]
        assert status["restarts"] == 0 and status["state"] in ("running", "standby"), status
        assert "paused" not in server.output() and "Traceback" not in server.output(), server.output()
    print(f"{STREAMS} streams live in {took:.2f}s")


def test_a_saturated_server_sheds_new_streams_with_retry_after_and_says_so_once(serve):
    server = serve(
        """
        server: {max_streams_per_client: 1000}
        topics:
          count: {feed: "tests.scale_feed:Counter", options: {interval: 0.05}}
        """,
        open_files=400,  # room for 300 streams
    )
    with server.client() as client:
        limit = client.get("/healthz").json()["streams"]["limit"]
        assert limit == 300, client.get("/healthz").json()
        while_shedding = []
        starts, _ = run_async(
            open_streams(
                [(server.url, "/sse/count?replay=0", None)] * (limit + 20),
                timeout=30,
                while_open=lambda: while_shedding.append(client.get("/healthz")),
            )
        )
        statuses = Counter(s.status for s in starts)
        assert statuses == {200: limit, 503: 20}, dict(statuses)
        assert {s.retry_after for s in starts if s.status == 503} == {"2"}
        (health,) = while_shedding
        assert health.status_code == 503 and health.json()["status"] == "overloaded", health.text
        streams = {"open": limit, "limit": limit, "per_client": 1000, "shedding": True}
        assert health.json()["streams"] == streams, health.json()
        assert server.output().count("shedding new streams") == 1, server.output()
        # The streams closed: healthz recovers and a new stream is served.
        wait_for("healthz to recover", lambda: client.get("/healthz").status_code == 200)
        assert read_events(client, "/sse/count?replay=0", 1)
    assert server.output().count("accepting new streams again") == 1, server.output()
