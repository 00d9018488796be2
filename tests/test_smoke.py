"""The offline default serves a page, health, topics and a stream."""

from tests.support import read_events

TICKS = """
topics:
  ticks:
    feed: demo
    options: {mode: walk, interval: 0.05}
"""


def test_serves_health_topics_page_and_stream(serve):
    server = serve(TICKS)
    with server.client() as client:
        assert client.get("/healthz").json()["status"] == "ok"
        assert "ticks" in client.get("/api/topics").json()["topics"]
        page = client.get("/")
        assert page.status_code == 200 and 'data-topic="ticks"' in page.text
        events = read_events(client, "/sse/ticks", 3)
        assert [int(e.id) for e in events] == sorted(int(e.id) for e in events)


def test_panels_start_with_their_feeds_state(serve):
    server = serve(
        """
        topics:
          ticks: {feed: demo, options: {mode: walk, interval: 0.05}}
          inbox: {feed: notifications}
        """
    )
    with server.client() as client:
        page = client.get("/").text
    # a push-only feed is ready for pushes; a streaming one is running
    assert 'data-state="ready">ready</span>' in page
    assert 'data-state="running">running</span>' in page
