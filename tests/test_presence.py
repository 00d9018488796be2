"""Live presence through the real server and Chromium: each panel shows how many watch its topic,
pushed on the page's one connection as pages open and close, counted across Redis-backed instances."""

from __future__ import annotations

import json
import signal

from httpx_sse import connect_sse

from tests.support import REDIS_URL

TOPICS = """
topics:
  walk: {feed: demo, options: {mode: walk, interval: 0.5}}
  clock: {feed: demo, options: {mode: clock, interval: 1.0}}
panels: [{topic: walk, view: stat}, {topic: clock, view: json}]
"""


def watching(page, topic: str, count: int) -> None:
    page.wait_for_selector(f'.panel[data-topic="{topic}"] [data-role="watching"]:text-is("{count} watching")')


def test_presence_rises_and_falls_as_pages_open_and_close(serve, open_page):
    server = serve(TOPICS)
    first = open_page(server.url)
    watching(first.page, "walk", 1)
    second = open_page(server.url)
    watching(second.page, "walk", 2)
    watching(first.page, "walk", 2)  # pushed to the page already open
    watching(first.page, "clock", 2)
    with server.client() as http:
        assert http.get("/api/topics").json()["topics"]["walk"]["watching"] == 2
        # a plain stream counts as a watcher too, and is told only when it asks
        with connect_sse(http, "GET", "/sse?topic=clock&presence=1&replay=0") as source:
            last_id = ""  # a presence frame has no id of its own: Last-Event-ID stays the last event's
            for told in source.iter_sse():
                if told.event == "clock:presence":
                    break
                last_id = told.id
            assert json.loads(told.data) == {"watching": 3} and told.id == last_id
            watching(first.page, "clock", 3)
            watching(first.page, "walk", 2)
    watching(first.page, "clock", 2)
    second.page.close()
    watching(first.page, "walk", 1)
    requests = [u for u in first.requests if "/sse?" in u]
    assert len(requests) == 1, requests  # on the page's one connection, not polled
    assert not first.console_errors, first.console_errors


def test_presence_counts_pages_on_every_instance_sharing_redis(redis_prefix, serve, open_page):
    shared = TOPICS + f"broker: {{url: '{REDIS_URL}', prefix: {redis_prefix}}}\n"
    one, two = serve(shared), serve(shared)
    first = open_page(one.url)
    watching(first.page, "walk", 1)
    second = open_page(two.url)
    watching(second.page, "walk", 2)
    watching(first.page, "walk", 2)
    with two.client() as http:
        assert http.get("/api/topics").json()["topics"]["walk"]["watching"] == 2
    second.page.close()
    watching(first.page, "walk", 1)
    third = open_page(two.url)
    watching(first.page, "walk", 2)
    assert third.page.is_visible('#connection[data-state="live"]')
    two.stop(signal.SIGKILL)  # no goodbye: its counts expire after the lease TTL (5 s)
    watching(first.page, "walk", 1)
