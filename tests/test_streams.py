"""The SSE endpoints' protocol: headers, retry hint, keepalives, errors, and shutdown."""

import signal
import threading
import time

import httpx

from tests.support import read_events, sse_stream

CONFIG = """
server: {keepalive: 0.2, retry_ms: 1500}
topics:
  quiet: {feed: "tests.sample_feeds:Ticker", options: {rate_hz: 0.01}}
  busy: {feed: "tests.sample_feeds:Ticker", options: {rate_hz: 100}}
"""


def test_headers_retry_hint_and_keepalive_comments(serve):
    server = serve(CONFIG)
    with server.client() as client, client.stream("GET", "/sse/quiet?replay=0") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        received = ""
        deadline = time.monotonic() + 10
        for text in response.iter_text():
            received += text
            if received.count(": keepalive") >= 2 or time.monotonic() > deadline:
                break
    assert received.startswith("retry: 1500\n\n"), received[:50]
    assert received.count(": keepalive\n\n") >= 2, received


def test_unknown_topic_and_bad_requests_are_json_errors(serve):
    server = serve(CONFIG)
    with server.client() as client:
        for path in ("/sse/nope", "/sse?topic=busy&topic=nope"):
            response = client.get(path)
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "unknown_topic"
            assert "nope" in response.json()["error"]["message"]
        response = client.get("/sse")
        assert response.status_code == 400 and "topic" in response.json()["error"]["message"]
        response = client.get("/sse/busy", headers={"Last-Event-ID": "yesterday"})
        assert response.status_code == 400 and "Last-Event-ID" in response.json()["error"]["message"]
        response = client.get("/sse/busy?replay=lots")
        assert response.status_code == 400
        response = client.get("/no/such/route")
        assert response.status_code == 404 and "error" in response.json()


def test_multiplexed_events_are_named_by_topic(serve):
    server = serve(CONFIG)
    with server.client() as client:
        events = read_events(client, "/sse?topic=busy&topic=quiet", 5)
        assert {e.event for e in events} <= {"busy", "quiet"} and "busy" in {e.event for e in events}


def test_api_topics_and_healthz(serve):
    server = serve(CONFIG)
    with server.client() as client, sse_stream(client, "/sse/busy?replay=0") as events:
        next(e for e in events if e.id)
        topics = client.get("/api/topics").json()["topics"]
        busy = topics["busy"]
        assert busy["feed"] == "tests.sample_feeds:Ticker"
        assert busy["subscribers"] == 1
        assert isinstance(busy["last_event_id"], int)
        assert busy["rate"] > 0
        assert busy["status"]["state"] == "running"
        health = client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        assert health.json()["feeds"] == {"quiet": "running", "busy": "running"}


def test_sigterm_ends_open_streams_promptly(serve):
    server = serve(CONFIG)
    ended = threading.Event()

    def hold_stream() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client, client.stream("GET", "/sse/busy") as r:
            try:
                for _ in r.iter_bytes():
                    pass
            except httpx.HTTPError:
                pass
        ended.set()

    threads = [threading.Thread(target=hold_stream, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    with server.client() as client:
        deadline = time.monotonic() + 10
        while client.get("/api/topics").json()["topics"]["busy"]["subscribers"] < 3:
            assert time.monotonic() < deadline, "streams did not open"
            time.sleep(0.05)
    started = time.monotonic()
    # uvicorn re-raises the signal once shut down, so the exit status is that of SIGTERM
    assert server.stop(signal.SIGTERM, timeout=15) in (0, -signal.SIGTERM), server.output()
    assert "timeout graceful shutdown exceeded" not in server.output()
    assert time.monotonic() - started < 10, "shutdown hung on open streams"
    assert ended.wait(5), "client streams were not ended"
