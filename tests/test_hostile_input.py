"""Hostile input through the real server: deep JSON, odd digits, huge headers. Each is a clear 400
with the JSON error body (OpenAI-shaped on /v1), never a 500 and never a traceback in the log."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from tests.support import read_events

TOKEN = "hostile-publish-token"
SECRET = "hostile-webhook-secret"

CONFIG = f"""
auth: {{publish_tokens: ["{TOKEN}"]}}
topics:
  inbox: {{feed: notifications, options: {{webhook_secret: "{SECRET}"}}}}
  ticks: {{feed: "tests.sample_feeds:Ticker", options: {{rate_hz: 50}}}}
"""

DEEP = b"[" * 30_000 + b"]" * 30_000  # deep enough that json.loads hits Python's recursion limit
UNCLOSED = b"[" * 30_000


def request(client, method: str, path: str, **kwargs):
    """The response, read whole unless it is an event stream (a request wrongly accepted)."""
    with client.stream(method, path, **kwargs) as response:
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.read()
    return response


def assert_error(response, code: str, fragment: str) -> dict:
    assert response.status_code == 400, (response.status_code, response.headers)
    error = response.json()["error"]
    assert error["code"] == code and fragment in error["message"], error
    assert len(response.content) < 1000, "the error should not echo the whole input"
    return error


def assert_no_traceback(server) -> None:
    assert "Traceback" not in server.output(), server.output()[-3000:]


def signed(body: bytes) -> dict[str, str]:
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}


@pytest.mark.parametrize("body", [DEEP, UNCLOSED], ids=["deep", "unclosed"])
def test_deeply_nested_json_is_400_on_every_json_route(serve, body):
    server = serve(CONFIG)
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    with server.client() as client:
        assert_error(client.post("/publish/inbox", content=body, headers=auth), "invalid_json", "JSON")
        assert_error(
            client.post("/feeds/inbox/webhook", content=body, headers=signed(body)), "invalid_json", "JSON"
        )
        answer = client.post(
            "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 400, answer.text[:300]
        assert answer.json()["error"]["type"] == "invalid_request_error", answer.json()
        # A body nested within the bound, strings full of brackets included, is still read.
        fine = b'[{"title": "[[[[ \\" not nesting {{{{", "id": "ok-1"}]'
        answer = client.post("/publish/inbox", content=fine, headers=auth)
        assert answer.status_code == 202, answer.text
    assert_no_traceback(server)


def test_nesting_error_names_the_bound(serve):
    server = serve(CONFIG)
    body = b'{"a":' * 65 + b"1" + b"}" * 65
    with server.client() as client:
        answer = client.post("/publish/inbox", content=body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert_error(answer, "invalid_json", "nested deeper than 64 levels")
    assert_no_traceback(server)


@pytest.mark.parametrize("value", ["²", "٣", "1_000", "-1", "9" * 5000, " "], ids=repr)
def test_odd_numbers_in_replay_and_last_event_id_are_400(serve, value):
    server = serve(CONFIG)
    with server.client() as client:
        assert_error(request(client, "GET", "/sse/ticks", params={"replay": value}), "bad_request", "replay")
        assert_error(
            request(client, "GET", "/sse", params={"topic": "ticks", "replay": value}),
            "bad_request",
            "replay",
        )
        if value.strip():  # an empty Last-Event-ID means "none" (what a browser sends at first)
            refused = request(client, "GET", "/sse/ticks", headers={"Last-Event-ID": value.encode()})
            assert_error(refused, "bad_request", "Last-Event-ID")
            assert value[:40] in refused.json()["error"]["message"], "shown as sent, not as latin-1"
            assert_error(
                request(client, "GET", "/sse/ticks", params={"last_event_id": value}),
                "bad_request",
                "Last-Event-ID",
            )
        # The stream still works for a well-formed request: the newest 2, in order.
        seen = read_events(client, "/sse/ticks?replay=0", 3)[-1].json()["n"]
        replayed = [e.json()["n"] for e in read_events(client, "/sse/ticks?replay=2", 2)]
        assert replayed[1] == replayed[0] + 1 and replayed[0] >= seen - 1, (seen, replayed)
    assert_no_traceback(server)


@pytest.mark.parametrize("header", ["Last-Event-ID", "Authorization", "X-Anything"])
def test_an_over_long_header_value_is_400(serve, header):
    server = serve(CONFIG)
    huge = "1" * 100_000 if header == "Last-Event-ID" else "Bearer " + "x" * 100_000
    with server.client() as client:
        for method, path in (("GET", "/sse/ticks"), ("POST", "/publish/inbox"), ("GET", "/api/topics")):
            assert_error(
                request(client, method, path, headers={header: huge}), "header_too_large", header.lower()
            )
        # Too many headers, or too many bytes of them all, whatever each one's size: 431.
        many = {f"X-H{i}": "1" for i in range(150)}
        big = {f"X-H{i}": "x" * 8000 for i in range(5)}
        for headers, fragment in ((many, "over the limit of 100"), (big, "over the limit of 32768")):
            answer = request(client, "GET", "/sse/ticks", headers=headers)
            assert answer.status_code == 431 and fragment in answer.json()["error"]["message"], answer.text
        # At the bound it is read as usual (a bearer token that long is simply wrong).
        at_bound = "Bearer " + "x" * (8192 - 7)
        answer = client.post("/publish/inbox", json={"title": "t"}, headers={"Authorization": at_bound})
        assert answer.status_code == 401, answer.text
    assert_no_traceback(server)
