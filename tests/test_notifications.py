"""POST /feeds/{topic}/webhook: HMAC-signed generic, GitHub and Alertmanager payloads become items."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from urllib.parse import urlencode

from tests.support import next_ids, read_events, sse_stream

SECRET = "webhook-secret-for-tests"

CONFIG = f"""
server: {{max_body: 8192}}
topics:
  inbox:
    feed: notifications
    options: {{webhook_secret: "{SECRET}"}}
  ticks:
    feed: demo
    options: {{mode: walk, interval: 0.05}}
"""

HOOK = "/feeds/inbox/webhook"


def signed(body: bytes, secret: str = SECRET, **headers: str) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json", **headers}


def post_signed(client, payload, **headers: str):
    body = json.dumps(payload).encode()
    return client.post(HOOK, content=body, headers=signed(body, **headers))


def github(client, event: str, payload: dict, delivery: str | None = None):
    return post_signed(
        client, payload, **{"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4())}
    )


def items(client, count: int) -> list[dict]:
    return [json.loads(e.data) for e in read_events(client, "/sse/inbox", count)]


REPO = {"full_name": "acme/rocket"}
SENDER = {"login": "octocat"}


def test_generic_json_signed_is_published(serve):
    server = serve(CONFIG)
    with server.client() as client:
        answer = post_signed(
            client, {"message": "Backup done\nall 3 volumes", "severity": "ok", "link": "https://b/1"}
        )
        assert answer.status_code == 202, answer.text
        assert answer.json()["duplicates"] == 0 and len(answer.json()["ids"]) == 1
        [item] = items(client, 1)
        assert item["title"] == "Backup done" and item["body"] == "Backup done\nall 3 volumes"
        assert item["level"] == "success" and item["url"] == "https://b/1" and item["source"] == "webhook"
        # A link that is not http(s) is left out rather than shown.
        answer = post_signed(
            client, [{"title": "a", "url": "javascript:alert(1)"}, {"title": "b", "id": "b1"}]
        )
        assert answer.status_code == 202 and answer.json()["notifications"][1] == "b1"
        assert [(i["title"], i["url"]) for i in items(client, 3)[1:]] == [("a", None), ("b", None)]


def test_github_events_are_mapped(serve):
    server = serve(CONFIG)
    with server.client() as client:
        answers = [
            github(client, "ping", {"zen": "Keep it logically awesome.", "hook": {}, "repository": REPO}),
            github(
                client,
                "push",
                {
                    "ref": "refs/heads/main",
                    "repository": REPO,
                    "pusher": {"name": "octocat"},
                    "sender": SENDER,
                    "compare": "https://github.com/acme/rocket/compare/a...b",
                    "commits": [
                        {"id": "abcdef1234", "message": "Fix ignition\n\nlong text"},
                        {"id": "1234567890", "message": "Add fins"},
                    ],
                },
            ),
            github(
                client,
                "pull_request",
                {
                    "action": "closed",
                    "repository": REPO,
                    "sender": SENDER,
                    "pull_request": {
                        "number": 42,
                        "title": "Faster engines",
                        "merged": True,
                        "html_url": "https://github.com/acme/rocket/pull/42",
                    },
                },
            ),
            github(
                client,
                "workflow_run",
                {
                    "action": "completed",
                    "repository": REPO,
                    "sender": SENDER,
                    "workflow_run": {
                        "name": "CI",
                        "conclusion": "failure",
                        "head_branch": "main",
                        "html_url": "https://github.com/acme/rocket/actions/runs/1",
                    },
                },
            ),
            github(
                client,
                "issues",
                {
                    "action": "opened",
                    "repository": REPO,
                    "sender": SENDER,
                    "issue": {"number": 7, "title": "Boom"},
                },
            ),
            github(
                client,
                "release",
                {
                    "action": "published",
                    "repository": REPO,
                    "sender": SENDER,
                    "release": {"tag_name": "v2.0", "name": "v2.0", "html_url": "https://github.com/r/2"},
                },
            ),
            github(client, "star", {"action": "created", "repository": REPO, "sender": SENDER}),
        ]
        assert [a.status_code for a in answers] == [202] * 7, [a.text for a in answers]
        got = items(client, 7)
        assert [i["level"] for i in got] == ["success", "info", "success", "error", "info", "success", "info"]
        ping, push, pr, run, issue, release, star = got
        assert "acme/rocket" in ping["title"] and ping["body"] == "Keep it logically awesome."
        assert push["title"] == "octocat pushed 2 commits to acme/rocket:main"
        assert push["body"] == "abcdef1 Fix ignition\n1234567 Add fins"
        assert push["url"].endswith("compare/a...b") and push["source"] == "github:acme/rocket"
        assert pr["title"] == "PR #42 merged in acme/rocket: Faster engines" and pr["url"].endswith(
            "/pull/42"
        )
        assert run["title"] == "Workflow CI failure on acme/rocket:main"
        assert issue["title"] == "Issue #7 opened in acme/rocket: Boom"
        assert release["title"] == "Release v2.0 published in acme/rocket"
        assert star["title"] == "GitHub star created in acme/rocket by octocat"
        assert all(i["id"].startswith("github:") for i in got)


def test_github_form_encoded_payload_is_read(serve):
    server = serve(CONFIG)
    with server.client() as client:
        payload = {"zen": "Design for failure.", "hook": {}, "repository": REPO}
        body = urlencode({"payload": json.dumps(payload)}).encode()
        headers = signed(body, **{"X-GitHub-Event": "ping", "X-GitHub-Delivery": "form-1"})
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        answer = client.post(HOOK, content=body, headers=headers)
        assert answer.status_code == 202, answer.text
        [item] = items(client, 1)
        assert item["body"] == "Design for failure." and item["id"] == "github:form-1"
        no_payload = b"other=1"
        headers = {**signed(no_payload), "Content-Type": "application/x-www-form-urlencoded"}
        assert client.post(HOOK, content=no_payload, headers=headers).status_code == 400
        # JSON sent with curl's default form content type is read as JSON
        plain = json.dumps({"title": "From curl -d", "id": "curl-1"}).encode()
        headers = {**signed(plain), "Content-Type": "application/x-www-form-urlencoded"}
        assert client.post(HOOK, content=plain, headers=headers).status_code == 202
        assert items(client, 2)[-1]["title"] == "From curl -d"


def test_a_webhook_body_of_another_media_type_is_415(serve):
    server = serve(CONFIG)
    body = json.dumps({"title": "typed"}).encode()
    with server.client() as client:
        for media in ("text/plain", "application/xml"):
            answer = client.post(HOOK, content=body, headers={**signed(body), "Content-Type": media})
            assert answer.status_code == 415, (media, answer.text)
            assert answer.json()["error"]["code"] == "unsupported_media_type"
        # JSON, JSON under a +json type, form encoding (GitHub's other type, curl's default), none
        for media in (
            "application/json",
            "application/cloudevents+json",
            "application/x-www-form-urlencoded",
        ):
            answer = client.post(HOOK, content=body, headers={**signed(body), "Content-Type": media})
            assert answer.status_code == 202, (media, answer.text)
        headers = signed(body)
        del headers["Content-Type"]
        assert client.post(HOOK, content=body, headers=headers).status_code == 202
        assert client.get("/api/topics").json()["topics"]["inbox"]["published"] == 4


def test_github_redelivery_is_dropped_as_a_duplicate(serve):
    server = serve(CONFIG)
    with server.client() as client:
        payload = {"action": "opened", "repository": REPO, "issue": {"number": 1, "title": "Once"}}
        first = github(client, "issues", payload, delivery="d-1")
        again = github(client, "issues", payload, delivery="d-1")
        assert first.status_code == again.status_code == 202
        assert first.json()["notifications"] == ["github:d-1"]
        assert again.json() == {"topic": "inbox", "ids": [], "notifications": [], "duplicates": 1}
        assert client.get("/api/topics").json()["topics"]["inbox"]["published"] == 1


def test_a_github_body_sent_again_under_another_delivery_id_is_a_duplicate(serve):
    """GitHub signs only the body: whoever saw one delivery could send it again with a new
    X-GitHub-Delivery (or X-GitHub-Event), so the body itself is taken once too."""
    server = serve(CONFIG)
    with server.client() as client:
        payload = {"action": "opened", "repository": REPO, "issue": {"number": 2, "title": "Replayed"}}
        first = github(client, "issues", payload, delivery="d-1")
        assert first.status_code == 202 and first.json()["notifications"] == ["github:d-1"]
        duplicate = {"topic": "inbox", "ids": [], "notifications": [], "duplicates": 1}
        for event, delivery in (("issues", "d-2"), ("push", "d-3")):
            again = github(client, event, payload, delivery=delivery)
            assert again.status_code == 202 and again.json() == duplicate, again.text
        other = github(client, "issues", {**payload, "issue": {"number": 3, "title": "New"}}, delivery="d-4")
        assert other.json()["notifications"] == ["github:d-4"]
        assert client.get("/api/topics").json()["topics"]["inbox"]["published"] == 2


def alert(status: str, severity: str, fingerprint: str, **extra) -> dict:
    return {
        "status": status,
        "labels": {"alertname": "HighLatency", "severity": severity, "instance": "api-1"},
        "annotations": {"summary": "p99 latency over 2s", "description": "Check the database."},
        "startsAt": "2024-05-01T12:00:00Z",
        "endsAt": "2024-05-01T12:30:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=x",
        "fingerprint": fingerprint,
        **extra,
    }


def alertmanager(*alerts: dict) -> dict:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="HighLatency"}',
        "status": "firing",
        "receiver": "dashboard",
        "groupLabels": {"alertname": "HighLatency"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


def test_alertmanager_alerts_are_mapped_and_repeats_dropped(serve):
    server = serve(CONFIG)
    with server.client() as client:
        first = post_signed(
            client, alertmanager(alert("firing", "critical", "f1"), alert("firing", "warning", "f2"))
        )
        assert first.status_code == 202 and len(first.json()["ids"]) == 2, first.text
        # Alertmanager repeats a firing alert every repeat_interval: the same alert is not shown twice.
        repeat = post_signed(
            client, alertmanager(alert("firing", "critical", "f1"), alert("resolved", "critical", "f1"))
        )
        assert repeat.json()["duplicates"] == 1 and len(repeat.json()["ids"]) == 1
        critical, warning, resolved = items(client, 3)
        assert critical["title"] == "Firing: p99 latency over 2s" and critical["level"] == "error"
        assert critical["body"] == "Check the database.\ninstance=api-1"
        assert critical["source"] == "alertmanager:dashboard"
        assert critical["url"] == "http://prometheus:9090/graph?g0.expr=x"
        assert critical["ts"] == 1714564800.0
        assert warning["level"] == "warning"
        assert resolved["title"] == "Resolved: p99 latency over 2s" and resolved["level"] == "success"
        assert resolved["ts"] == 1714566600.0


def test_bad_or_missing_signature_is_401(serve):
    server = serve(CONFIG)
    with server.client() as client:
        body = json.dumps({"title": "forged"}).encode()
        cases = [
            {},  # nothing
            {"X-Hub-Signature-256": "sha256=" + "0" * 64},
            signed(body, secret="another-secret"),
            signed(body + b" "),  # signed a different body
            {"X-Hub-Signature-256": "sha1=abc"},
            {"Authorization": "Bearer wrong-secret"},
        ]
        for headers in cases:
            answer = client.post(HOOK, content=body, headers=headers)
            assert answer.status_code == 401, (headers, answer.text)
            assert answer.json()["error"]["message"] and SECRET not in answer.text
        assert client.get("/api/topics").json()["topics"]["inbox"]["published"] == 0
        # Senders that cannot sign (Alertmanager) may send the secret as a bearer token instead.
        answer = client.post(HOOK, content=body, headers={"Authorization": f"Bearer {SECRET}"})
        assert answer.status_code == 202, answer.text
        assert client.get("/api/topics").json()["topics"]["inbox"]["published"] == 1


def test_webhooks_are_refused_without_a_configured_secret(serve):
    server = serve("topics: {inbox: {feed: notifications, options: {webhook_secret: ''}}}\n")
    with server.client() as client:
        body = b'{"title": "unsigned"}'
        for headers in ({}, signed(body, secret=""), {"Authorization": "Bearer anything"}):
            answer = client.post(HOOK, content=body, headers=headers)
            assert answer.status_code == 403, answer.text
            assert answer.json()["error"]["code"] == "webhook_disabled"
            assert "webhook_secret" in answer.json()["error"]["message"]
        assert client.get("/api/topics").json()["topics"]["inbox"]["published"] == 0


def test_bad_webhook_bodies_are_json_errors_and_do_not_disturb_streams(serve):
    server = serve(CONFIG)
    with (
        server.client() as client,
        server.client() as other,
        sse_stream(client, "/sse/inbox") as inbox,
        sse_stream(other, "/sse/ticks") as ticks,
    ):
        not_json = b"{not json"
        answers = [
            other.post(HOOK, content=not_json, headers=signed(not_json)),
            other.post(HOOK, content=b"x" * 9000, headers=signed(b"x" * 9000)),
            other.post(HOOK, content=iter([b"x" * 4000] * 3), headers=signed(b"x" * 12000)),
            post_signed(other, {"no": "title"}),
            post_signed(other, {"title": "t", "ts": "soon"}),
            post_signed(other, []),
            other.post("/feeds/nope/webhook", content=b"{}", headers=signed(b"{}")),
            # a time no browser's Date holds would blank the panel for every viewer
            post_signed(other, {"title": "t", "ts": 1e300}),
            post_signed(other, {"title": "t", "ts": -1e300}),
            # signed, but fields of other types than GitHub's and Alertmanager's documents say
            github(other, "issues", {"action": "opened", "issue": "x"}),
            github(other, "push", {"repository": "x", "sender": "y"}),
            github(other, "workflow_run", {"action": ["x"], "workflow_run": "x"}),
            post_signed(other, {"receiver": "r", "alerts": [{"labels": [1]}]}),
        ]
        assert [a.status_code for a in answers] == [400, 413, 413, 422, 422, 422, 404, *[422] * 6], [
            a.text for a in answers
        ]
        assert "line 1 column 2" in answers[0].json()["error"]["message"]
        assert answers[3].json()["error"]["message"].endswith("needs a title or a message")
        assert all(a.json()["error"]["message"] for a in answers)
        good = post_signed(other, {"title": "after the noise"})
        assert good.status_code == 202
        received = next(e for e in inbox if e.id)
        assert int(received.id) == good.json()["ids"][0]
        assert json.loads(received.data)["title"] == "after the noise"
        tick_ids = next_ids(ticks, 10)
        assert len(tick_ids) == 10 and tick_ids == sorted(set(tick_ids))
        topics = other.get("/api/topics").json()["topics"]
        assert topics["ticks"]["dropped"] == 0 and topics["inbox"]["published"] == 1


def test_webhook_and_publish_share_duplicate_memory(serve):
    server = serve(CONFIG.replace("topics:", 'auth: {publish_tokens: ["t0k"]}\ntopics:'))
    with server.client() as client:
        pushed = client.post(
            "/publish/inbox", json={"id": "build-1", "title": "b"}, headers={"Authorization": "Bearer t0k"}
        )
        assert pushed.status_code == 202 and len(pushed.json()["ids"]) == 1
        hooked = post_signed(client, {"id": "build-1", "title": "b again"})
        assert hooked.json()["duplicates"] == 1
        [item] = items(client, 1)
        assert item["id"] == "build-1" and item["title"] == "b"


WHSEC = "whsec_" + base64.b64encode(b"standard-webhooks-key-32-bytes!!").decode()
STANDARD_CONFIG = f"""
topics:
  inbox:
    feed: notifications
    options: {{webhook_secret: "{WHSEC}", webhook_tolerance: 60}}
"""


def standard_headers(body: bytes, msg_id: str, timestamp: int, key: bytes | None = None) -> dict[str, str]:
    """The Standard Webhooks headers, signed as the reference libraries sign them."""
    key = base64.b64decode(WHSEC.removeprefix("whsec_")) if key is None else key
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    signature = "v1," + base64.b64encode(digest).decode()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        # A sender rotating its secret signs with both: any one matching is enough.
        "webhook-signature": f"v1,{base64.b64encode(b'old key signature').decode()} {signature}",
        "Content-Type": "application/json",
    }


def test_standard_webhooks_are_verified_and_each_message_taken_once(serve):
    server = serve(STANDARD_CONFIG)
    body = json.dumps({"title": "deploy finished", "level": "success"}).encode()
    msg_id = f"msg_{uuid.uuid4().hex}"
    with server.client() as client:
        answer = client.post(HOOK, content=body, headers=standard_headers(body, msg_id, int(time.time())))
        assert answer.status_code == 202 and len(answer.json()["ids"]) == 1, answer.text
        [item] = items(client, 1)
        assert item["title"] == "deploy finished"
        # The same message again (a replay, or the sender retrying with a fresh timestamp): taken
        # for a 2xx, published not again.
        for timestamp in (int(time.time()), int(time.time()) + 5):
            again = client.post(HOOK, content=body, headers=standard_headers(body, msg_id, timestamp))
            assert again.status_code == 202 and again.json()["replayed"] is True, again.text
            assert again.json()["ids"] == []
        assert client.get("/api/topics").json()["topics"]["inbox"]["published"] == 1


def test_standard_webhooks_refuse_stale_timestamps_and_bad_signatures(serve):
    server = serve(STANDARD_CONFIG)
    body = b'{"title": "from the past"}'
    with server.client() as client:
        for skew in (-120, 120):  # outside the 60 s tolerance, either way
            headers = standard_headers(body, "msg_stale", int(time.time()) + skew)
            answer = client.post(HOOK, content=body, headers=headers)
            assert answer.status_code == 401 and answer.json()["error"]["code"] == "stale_timestamp", (
                answer.text
            )
        headers = standard_headers(body, "msg_forged", int(time.time()), key=b"not the key")
        answer = client.post(HOOK, content=body, headers=headers)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "bad_signature", answer.text
        tampered = standard_headers(body, "msg_tampered", int(time.time()))
        answer = client.post(HOOK, content=b'{"title": "changed"}', headers=tampered)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "bad_signature", answer.text
        for broken in ({"webhook-id": ""}, {"webhook-timestamp": "1e9"}):
            answer = client.post(HOOK, content=body, headers={**tampered, **broken})
            assert answer.status_code == 400, answer.text
        # Refusals use up no id: the genuine message is still taken.
        answer = client.post(
            HOOK, content=body, headers=standard_headers(body, "msg_forged", int(time.time()))
        )
        assert answer.status_code == 202 and len(answer.json()["ids"]) == 1, answer.text
        assert client.get("/api/topics").json()["topics"]["inbox"]["published"] == 1
    assert "Traceback" not in server.output()


def test_a_standard_webhook_that_fails_can_be_retried(serve):
    server = serve(STANDARD_CONFIG)
    with server.client() as client:
        bad = b'{"no_title_anywhere": 1}'
        answer = client.post(HOOK, content=bad, headers=standard_headers(bad, "msg_retry", int(time.time())))
        assert answer.status_code == 422, answer.text
        good = b'{"title": "fixed"}'
        answer = client.post(
            HOOK, content=good, headers=standard_headers(good, "msg_retry", int(time.time()))
        )
        assert answer.status_code == 202 and len(answer.json()["ids"]) == 1, answer.text
