"""Stream capacity: the server raises its open files limit as far as it may, says at start how many
streams it can hold, answers a stream past that 503 `overloaded` naming the limit and the fix, and
connections past the open files limit itself are dropped quietly while it goes on serving."""

from __future__ import annotations

import socket
from collections import Counter

import httpx
from httpx_sse import connect_sse

from tests.support import open_streams, raise_open_files_limit, read_events, run_async, wait_for

TOPIC = """
server: {max_streams_per_client: 1000}
topics:
  count: {feed: "tests.scale_feed:Counter", options: {interval: 0.05}}
"""


def test_the_server_raises_its_soft_limit_to_the_hard_one_and_says_how_many_streams_it_holds(serve):
    server = serve(TOPIC, open_files=(300, 600))  # a soft limit below the hard one, as systemd's 1024
    assert (
        "  streams: up to 500 open at once per process (open files limit 600, 100 kept for feeds, "
        "the broker, upstreams and logs); more: raise the limit (ulimit -n" in server.output()
    ), server.output()
    with server.client() as client:
        assert client.get("/healthz").json()["streams"]["limit"] == 500


def test_a_stream_past_what_the_server_holds_gets_503_overloaded_naming_the_limit_and_the_fix(serve):
    server = serve(TOPIC, open_files=260)  # room for 160 streams
    refused: list[httpx.Response] = []

    def another_stream() -> None:  # a real SSE client, while the 160 are open
        with server.client() as client, connect_sse(client, "GET", "/sse/count") as source:
            source.response.read()
            refused.append(source.response)

    starts, _ = run_async(
        open_streams([(server.url, "/sse/count?replay=0", None)] * 160, while_open=another_stream)
    )
    assert Counter(s.status for s in starts) == {200: 160}
    (response,) = refused
    assert response.status_code == 503 and response.headers["retry-after"] == "2", response.text
    error = response.json()["error"]
    assert error["code"] == "overloaded", error
    assert error["message"].startswith("this server holds 160 streams, its most (open files limit 260"), error
    assert "ulimit -n" in error["message"] and "Scale out" in error["message"], error


def test_connections_past_the_open_files_limit_are_dropped_quietly_and_the_server_serves_on(serve):
    server = serve(TOPIC, open_files=260)
    raise_open_files_limit(600)
    seen: Counter[str] = Counter()

    def flood() -> None:  # while 160 streams are open: past the 100 files kept free, accepts fail (EMFILE)
        held = []
        for _ in range(200):
            try:
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                held.append(sock)
                sock.sendall(b"GET /sse/count HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                seen[sock.recv(12).decode() or "closed"] += 1
            except OSError as exc:
                seen[type(exc).__name__] += 1
        for sock in held:
            sock.close()

    starts, _ = run_async(open_streams([(server.url, "/sse/count?replay=0", None)] * 160, while_open=flood))
    assert Counter(s.status for s in starts) == {200: 160}
    assert seen["HTTP/1.1 503"] > 0 and seen["HTTP/1.1 200"] == 0, seen
    assert sum(seen.values()) - seen["HTTP/1.1 503"] > 0, f"the open files limit was not reached: {seen}"
    with server.client() as client:  # the listener survived: the server serves on
        assert wait_for("a stream to be served again", lambda: read_events(client, "/sse/count?replay=0", 1))
    output = server.output()
    assert "Traceback" not in output and "ERROR" not in output, output
