"""A subscriber that stops reading is cut off at its backlog: it delays no one, memory stays bounded."""

import socket
import time

import psutil

from tests.support import sse_stream

CONFIG = """
server: {max_backlog: 64}
topics:
  bulk: {feed: "tests.sample_feeds:Bulky", options: {size: 16384, rate_hz: 200}, history: 32}
"""


def open_stalled_reader(port: int, path: str) -> socket.socket:
    """A client that sends its request and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def test_stalled_reader_is_cut_off_and_a_fast_reader_sees_every_event(serve):
    server = serve(CONFIG)
    process = psutil.Process(server.proc.pid)
    stalled = [open_stalled_reader(server.port, "/sse/bulk?replay=0") for _ in range(5)]
    try:
        with server.client() as client:
            rss_before = process.memory_info().rss
            numbers = []
            with sse_stream(client, "/sse/bulk?replay=0") as events:
                deadline = time.monotonic() + 30
                for event in events:
                    numbers.append(event.json()["n"])
                    if len(numbers) >= 1000:
                        break
                    assert time.monotonic() < deadline, f"fast reader got only {len(numbers)} events"
            topic = client.get("/api/topics").json()["topics"]["bulk"]
            metrics = client.get("/metrics").text
            rss_after = process.memory_info().rss
    finally:
        for sock in stalled:
            sock.close()
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "the fast reader lost events"
    # Each stalled reader is cut off holding a full backlog (64 events) and missing the 65th:
    # the metric counts the events lost, and readers cut off separately.
    assert topic["dropped"] == 5 * 65, topic
    assert 'dashboard_events_dropped_total{topic="bulk"} 325.0' in metrics, metrics
    assert 'dashboard_subscribers_cut_off_total{topic="bulk"} 5.0' in metrics, metrics
    # 1000 events of 16 KiB went by; five stalled readers must not each keep them all (80 MiB),
    # only their bounded backlog (64 frames, about 1 MiB each).
    assert rss_after - rss_before < 25 * 1024 * 1024, f"RSS grew by {(rss_after - rss_before) >> 20} MiB"
