"""POST /publish/{topic}: authenticated pushes, and every bad request refused as JSON without harm."""

from __future__ import annotations

import json
import socket

from tests.support import next_ids, read_events, sse_stream

TOKEN = "test-publish-token-1"

CONFIG = f"""
auth:
  publish_tokens: ["{TOKEN}", "second-token"]
topics:
  alerts:
    feed: notifications
  ticks:
    feed: demo
    options: {{mode: walk, interval: 0.05}}
"""

SMALL_BODY_LIMIT = CONFIG + "server: {max_body: 4096}\n"

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def raw_request(server, head: str, body: bytes) -> tuple[int, dict]:
    """Send `head` and `body` on a raw socket, *without finishing the body*, and read the answer.

    An answer arriving while the body is still incomplete proves the server did not wait for it all.
    """
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without an answer: {data!r}"
            data += chunk
        header_text, _, rest = data.partition(b"\r\n\r\n")
        status = int(header_text.split()[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in header_text.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed mid-answer"
            rest += chunk
    return status, json.loads(rest[:length])


def assert_json_error(response, status: int, fragment: str = "") -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and error["message"], error
    assert fragment.lower() in error["message"].lower(), error
    return error


def test_push_with_token_reaches_subscribers_as_a_normalised_item(serve):
    server = serve(CONFIG)
    with server.client() as client:
        item = {
            "title": "Deploy finished",
            "body": "v1.2 is live",
            "level": "SUCCESS",
            "url": "https://x.test/1",
        }
        answer = client.post("/publish/alerts", json=item, headers=AUTH)
        assert answer.status_code == 202, answer.text
        ids = answer.json()["ids"]
        assert answer.json()["topic"] == "alerts" and len(ids) == 1
        [event] = read_events(client, "/sse/alerts", 1)
        assert int(event.id) == ids[0] and event.event == "message"
        data = json.loads(event.data)
        assert {k: data[k] for k in ("title", "body", "level", "url", "source")} == {
            "title": "Deploy finished",
            "body": "v1.2 is live",
            "level": "success",
            "url": "https://x.test/1",
            "source": "api",
        }
        assert data["id"] and isinstance(data["ts"], float)
        # The second configured token works as well; a list publishes several items in order.
        batch = [{"title": "one"}, {"title": "two", "level": "warn", "ts": "2024-05-01T12:00:00Z"}]
        answer = client.post("/publish/alerts", json=batch, headers={"Authorization": "Bearer second-token"})
        assert answer.status_code == 202 and len(answer.json()["ids"]) == 2, answer.text
        events = read_events(client, "/sse/alerts", 3)
        assert [json.loads(e.data)["title"] for e in events] == ["Deploy finished", "one", "two"]
        assert json.loads(events[2].data)["level"] == "warning"
        assert json.loads(events[2].data)["ts"] == 1714564800.0


def test_duplicate_ids_are_dropped(serve):
    server = serve(CONFIG)
    with server.client() as client:
        first = client.post("/publish/alerts", json={"id": "job-7", "title": "first"}, headers=AUTH)
        again = client.post("/publish/alerts", json={"id": "job-7", "title": "again"}, headers=AUTH)
        both = client.post(
            "/publish/alerts", json=[{"id": "x", "title": "x"}, {"id": "x", "title": "y"}], headers=AUTH
        )
        assert first.status_code == again.status_code == both.status_code == 202
        assert len(first.json()["ids"]) == 1 and again.json()["ids"] == [] and len(both.json()["ids"]) == 1
        assert client.get("/api/topics").json()["topics"]["alerts"]["published"] == 2
        events = read_events(client, "/sse/alerts", 2)
        assert [json.loads(e.data)["title"] for e in events] == ["first", "x"]


def test_missing_or_wrong_token_is_401(serve):
    server = serve(CONFIG)
    with server.client() as client:
        error = assert_json_error(client.post("/publish/alerts", json={"title": "t"}), 401, "Bearer")
        assert error["code"] == "unauthorized"
        wrong = client.post("/publish/alerts", json={"title": "t"}, headers={"Authorization": "Bearer nope"})
        assert_json_error(wrong, 401, "invalid token")
        basic = client.post(
            "/publish/alerts", json={"title": "t"}, headers={"Authorization": f"Basic {TOKEN}"}
        )
        assert_json_error(basic, 401)
        assert client.get("/api/topics").json()["topics"]["alerts"]["published"] == 0


def test_without_configured_tokens_publishing_is_refused(serve):
    # An empty token (what `${DASHBOARD_PUBLISH_TOKEN:-}` gives when unset) counts as none.
    server = serve('auth: {publish_tokens: [""]}\ntopics: {alerts: {feed: notifications}}\n')
    with server.client() as client:
        for headers in ({}, {"Authorization": "Bearer anything"}):
            error = assert_json_error(
                client.post("/publish/alerts", json={"title": "t"}, headers=headers), 401
            )
            assert "publish_tokens" in error["message"] and error["code"] == "publish_disabled"


def test_unknown_topic_404_and_push_to_a_non_push_feed_409(serve):
    server = serve(CONFIG)
    with server.client() as client:
        assert_json_error(client.post("/publish/nope", json={"title": "t"}, headers=AUTH), 404, "nope")
        error = assert_json_error(
            client.post("/publish/ticks", json={"value": 1}, headers=AUTH), 409, "ticks"
        )
        assert error["code"] == "not_pushable"


def test_invalid_json_is_400_with_the_parsers_message(serve):
    server = serve(CONFIG)
    with server.client() as client:
        answer = client.post("/publish/alerts", content=b'{"title": "t",', headers=AUTH)
        error = assert_json_error(answer, 400, "invalid JSON")
        assert "line 1 column" in error["message"], error  # json's own message, position included
        not_utf8 = client.post("/publish/alerts", content=b"\xff\xfe{", headers=AUTH)
        assert_json_error(not_utf8, 400, "invalid JSON")


def test_a_body_sent_as_another_media_type_is_415_and_one_sent_without_is_read_as_json(serve):
    server = serve(CONFIG)
    item = json.dumps({"title": "t"}).encode()
    with server.client() as client:
        form = client.post("/publish/alerts", data={"title": "t"}, headers=AUTH)  # curl -d's default
        error = assert_json_error(form, 415, "application/x-www-form-urlencoded")
        assert error["code"] == "unsupported_media_type"
        for media in ("text/plain", "application/xml", "multipart/form-data; boundary=x"):
            answer = client.post("/publish/alerts", content=item, headers={**AUTH, "Content-Type": media})
            assert assert_json_error(answer, 415)["code"] == "unsupported_media_type", media
        assert client.post("/publish/alerts", data={"title": "t"}).status_code == 401  # the token first
        for media in ("application/json; charset=utf-8", "Application/JSON", "application/vnd.acme+json"):
            answer = client.post("/publish/alerts", content=item, headers={**AUTH, "Content-Type": media})
            assert answer.status_code == 202, (media, answer.text)
        assert "content-type" not in client.build_request("POST", "/", content=item).headers
        assert client.post("/publish/alerts", content=item, headers=AUTH).status_code == 202
        assert client.get("/api/topics").json()["topics"]["alerts"]["published"] == 4


def test_an_item_the_feed_rejects_is_422_naming_the_field(serve):
    server = serve(CONFIG)
    with server.client() as client:
        cases = [
            ({"body": "no title"}, "title"),
            ({"title": "t", "level": "panic"}, "level"),
            ({"title": "t", "url": "javascript:alert(1)"}, "url"),
            ({"title": "t", "colour": "red"}, "colour"),
            ({"title": "t", "ts": "yesterday"}, "ts"),
            ([], "empty"),
            ("just a string", "object"),
        ]
        for body, fragment in cases:
            assert_json_error(client.post("/publish/alerts", json=body, headers=AUTH), 422, fragment)
        assert client.get("/api/topics").json()["topics"]["alerts"]["published"] == 0


def padded(size: int) -> bytes:
    """A valid notification of exactly `size` bytes (JSON allows trailing whitespace)."""
    item = json.dumps({"title": "t"}).encode()
    return item + b" " * (size - len(item))


def test_oversize_body_is_413_at_the_default_limit_of_1_mib(serve):
    server = serve(CONFIG)
    limit = 1 << 20  # the documented default of server.max_body
    with server.client() as client:
        for name, body in (("with Content-Length", padded), ("chunked", lambda n: iter([padded(n)]))):
            at_limit = client.post("/publish/alerts", content=body(limit), headers=AUTH)
            assert at_limit.status_code == 202, (name, at_limit.status_code, at_limit.text)
            over = client.post("/publish/alerts", content=body(limit + 1), headers=AUTH)
            assert_json_error(over, 413, f"limit of {limit} bytes")


def test_oversize_body_is_refused_before_it_is_all_sent(serve):
    server = serve(SMALL_BODY_LIMIT)
    head = f"POST /publish/alerts HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
    # A declared length over the limit: answered with no body sent at all.
    status, body = raw_request(
        server, head + "Content-Type: application/json\r\nContent-Length: 50000000\r\n", b""
    )
    assert status == 413 and "limit of 4096" in body["error"]["message"], body
    # Chunked, no Content-Length: answered once the limit is passed, the body still unfinished.
    chunk = b"x" * 8192
    status, body = raw_request(
        server, head + "Transfer-Encoding: chunked\r\n", f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    )
    assert status == 413 and body["error"]["code"] == "payload_too_large", body
    # And through an ordinary client streaming a chunked body of 8 MiB.
    with server.client() as client:

        def chunks():
            for _ in range(128):
                yield b"y" * 65536

        answer = client.post("/publish/alerts", content=chunks(), headers=AUTH)
        assert "content-length" not in answer.request.headers
        assert_json_error(answer, 413, "limit")
        assert client.get("/api/topics").json()["topics"]["alerts"]["published"] == 0


def test_bad_requests_do_not_disturb_open_streams(serve):
    server = serve(SMALL_BODY_LIMIT)
    with (
        server.client() as client,
        server.client() as other,
        sse_stream(client, "/sse/alerts") as alerts,
        sse_stream(other, "/sse/ticks") as ticks,
    ):
        bad = [
            other.post("/publish/alerts", json={"title": "t"}),
            other.post("/publish/alerts", json={"title": "t"}, headers={"Authorization": "Bearer no"}),
            other.post("/publish/alerts", content=b"{", headers=AUTH),
            other.post("/publish/alerts", content=b"x" * 10000, headers=AUTH),
            other.post("/publish/alerts", content=iter([b"x" * 5000] * 3), headers=AUTH),
            other.post("/publish/nope", json={"title": "t"}, headers=AUTH),
            other.post("/publish/ticks", json={"title": "t"}, headers=AUTH),
            other.post("/publish/alerts", json={"level": "x"}, headers=AUTH),
        ]
        assert [r.status_code for r in bad] == [401, 401, 400, 413, 413, 404, 409, 422]
        assert all("error" in r.json() for r in bad)
        good = other.post("/publish/alerts", json={"title": "still here"}, headers=AUTH)
        assert good.status_code == 202
        # The alerts subscriber gets exactly the one good item, nothing else.
        received = next(e for e in alerts if e.id)
        assert int(received.id) == good.json()["ids"][0]
        assert json.loads(received.data)["title"] == "still here"
        # The ticks subscriber kept streaming, in order, and was never cut off.
        tick_ids = next_ids(ticks, 10)
        assert len(tick_ids) == 10 and tick_ids == sorted(set(tick_ids))
        topics = other.get("/api/topics").json()["topics"]
        assert topics["ticks"]["dropped"] == 0 and topics["ticks"]["subscribers"] == 1
        assert topics["alerts"]["subscribers"] == 1 and topics["alerts"]["published"] == 1


def test_a_feed_with_a_plain_on_publish_takes_pushes(serve):
    server = serve(
        """
        auth: {publish_tokens: [t0k3n]}
        topics:
          plain: {feed: "tests.sample_feeds:PlainInbox"}
        """
    )
    with server.client() as client:
        answer = client.post("/publish/plain", json={"x": 1}, headers={"Authorization": "Bearer t0k3n"})
        assert answer.status_code == 202, answer.text
        [event] = read_events(client, "/sse/plain", 1)
        assert event.json() == {"got": {"x": 1}}


def test_notifications_not_stored_are_taken_again():
    """What the broker could not store is given back, so the sender's retry is not a duplicate."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from dashboard.config import parse_config
    from dashboard.runtime import Runtime

    async def scenario():
        feed = Runtime(parse_config("topics: {inbox: {feed: notifications}}")).feeds["inbox"]
        item = {"id": "n-1", "title": "once"}
        first = await feed.on_publish(item)
        again = await feed.on_publish(item)
        await feed.not_published(first)
        retried = await feed.on_publish(item)
        return len(first), len(again), len(retried)

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, scenario()).result(timeout=30) == (1, 0, 1)
