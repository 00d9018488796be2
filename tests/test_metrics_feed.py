"""The `metrics` feed (system numbers from psutil) and the `server` feed (the server's own health)."""

from __future__ import annotations

import json
import time

import pytest

from dashboard.config import parse_config
from dashboard.errors import ConfigError
from tests.support import read_events, sse_stream

CPU = {"cpu_percent"}
MEMORY = {"memory_percent", "memory_used_bytes", "memory_available_bytes", "memory_total_bytes"}
SWAP = {"swap_percent", "swap_used_bytes", "swap_total_bytes"}
LOAD = {"load_1m", "load_5m", "load_15m"}
DISK = {"disk_percent", "disk_used_bytes", "disk_free_bytes", "disk_total_bytes"}
DISK_IO = {"disk_read_bytes_per_s", "disk_write_bytes_per_s", "disk_reads_per_s", "disk_writes_per_s"}
NET = {"net_recv_bytes_per_s", "net_sent_bytes_per_s", "net_recv_packets_per_s", "net_sent_packets_per_s"}


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def test_metrics_events_are_flat_numbers_that_change(serve):
    server = serve("topics: {system: {feed: metrics, options: {interval: 0.2}}}\n")
    with server.client() as client:
        samples = []
        with sse_stream(client, "/sse/system") as events:
            for event in events:
                if event.id and event.event == "message":
                    samples.append(json.loads(event.data))
                    client.get("/api/topics")  # some loopback traffic for the network rates
                if len(samples) == 5:
                    break
    for data in samples:
        assert all(is_number(v) for v in data.values()), data
        expected = CPU | MEMORY | SWAP | LOAD | DISK | NET | {"processes"}
        assert expected <= set(data), expected - set(data)
        assert any(k.startswith("cpu0_") for k in data), "per-core CPU is in the default groups"
        assert all(0 <= data[k] <= 100 for k in data if k.endswith("_percent")), data
        assert all(data[k] >= 0 for k in data if k.endswith("_per_s")), data
        assert data["memory_used_bytes"] + data["memory_available_bytes"] == data["memory_total_bytes"]
        assert data["processes"] > 1
    changed = {k for k in samples[0] if len({s[k] for s in samples}) > 1}
    assert changed, "no number changed over five samples"
    # The network rates are per second over the sample, not cumulative counters.
    assert any(s["net_recv_bytes_per_s"] > 0 for s in samples)
    assert max(s["net_recv_bytes_per_s"] for s in samples) < 1e10


def test_metrics_groups_option_selects_the_numbers(serve):
    server = serve("topics: {m: {feed: metrics, options: {interval: 0.1, groups: [memory, load]}}}\n")
    with server.client() as client:
        [event] = read_events(client, "/sse/m", 1)
    assert set(json.loads(event.data)) == MEMORY | LOAD


def test_metrics_options_are_checked():
    with pytest.raises(ConfigError) as caught:
        parse_config("topics: {m: {feed: metrics, options: {groups: [cpu, gpu], interval: 0}}}\n", "c.yaml")
    text = str(caught.value)
    assert "topics.m.options.groups.1" in text and "topics.m.options.interval" in text and "c.yaml:1" in text


SERVER_CONFIG = """
auth: {publish_tokens: [tok]}
supervisor: {initial_backoff: 0.05, max_backoff: 0.1}
topics:
  ticks: {feed: demo, options: {mode: walk, interval: 0.05}}
  inbox: {feed: notifications}
  flaky: {feed: "tests.plugin_feeds:Flaky"}
  health: {feed: server, options: {interval: 0.3}}
"""


def health_reports(client, count: int) -> list[dict]:
    return [json.loads(e.data) for e in read_events(client, "/sse/health?replay=0", count)]


def test_server_feed_numbers_move_when_events_flow(serve):
    server = serve(SERVER_CONFIG)
    with server.client() as client, server.client() as watcher:
        with sse_stream(watcher, "/sse/ticks"):
            # Wait until a report covers a whole interval with the ticks subscriber attached (the
            # first one that sees it may cover only the end of an interval).
            deadline = time.monotonic() + 20
            while True:
                [report] = health_reports(client, 1)
                if report["topics"]["ticks"]["delivered_per_s"] > 5 or time.monotonic() > deadline:
                    break
        ticks = report["topics"]["ticks"]
        assert ticks["subscribers"] == 1 and ticks["published_per_s"] > 5 and ticks["delivered_per_s"] > 5, (
            report
        )
        assert report["topics"]["flaky"]["restarts"] >= 1 and report["restarts"] >= 1
        assert report["ai_ttft_seconds"] is None  # nothing in this server measures it
        assert report["subscribers"] >= 2  # ticks, and this reader of the health topic
        assert report["connections"] == 2  # the same two streams, each counted once
        assert set(report["topics"]) == {"ticks", "inbox", "flaky", "health"}

        # Pushed events show up in the next report's rate for their topic.
        before = report["topics"]["flaky"]["restarts"]
        with sse_stream(watcher, "/sse/health?replay=0") as health:
            for _ in range(6):
                r = client.post(
                    "/publish/inbox", json={"title": "n"}, headers={"Authorization": "Bearer tok"}
                )
                assert r.status_code == 202
            rates = []
            for event in health:
                if event.id and event.event == "message":
                    data = json.loads(event.data)
                    rates.append(data["topics"]["inbox"]["published_per_s"])
                    if sum(rates) > 0:
                        break
                    assert len(rates) < 10, rates
        assert data["topics"]["inbox"]["published_per_s"] > 0
        assert data["topics"]["flaky"]["restarts"] > before  # it keeps failing and being restarted


def test_server_feed_reports_ai_time_to_first_token(serve):
    server = serve(
        """
        topics:
          ai: {feed: "tests.plugin_feeds:TtftProbe", options: {seconds: 0.25, interval: 0.02}}
          health: {feed: server, options: {interval: 0.2, per_topic: false}}
        """
    )
    with server.client() as client:
        reports = health_reports(client, 3)
    assert "topics" not in reports[-1]
    assert reports[-1]["ai_ttft_seconds"] == pytest.approx(0.25), reports
