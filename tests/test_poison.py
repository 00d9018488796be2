"""One bad event never breaks a topic: what no reader could be sent (a lone surrogate, NaN, a key
or an object JSON cannot hold) is refused where it enters, with an error naming the field, or
skipped with a status when a feed yields it; a provider's answer holding one reaches readers as
valid text. Every stream of the topic stays readable throughout. Through the real server."""

from __future__ import annotations

import contextlib
import json
import time

import httpx
import pytest

from tests.support import ServerFactory, sse_stream
from tests.upstream import relay_config

KEY = "sk-poison-0123456789abcdef0123456789"
API = "tok-poison-api-5f0c9e1d2b7a"
PUBLISH = "tok-poison-pub-8a7b6c5d4e3f"
SECRET = "whsec-poison-0123456789abcdef"
TOPIC = "assistant"
TOPICS = f"""
auth:
  api_tokens: [{API}]
  publish_tokens: [{PUBLISH}]
topics:
  assistant: {{feed: ai, options: {{model: t-echo}}}}
  odd: {{feed: ai, options: {{model: t-surrogate}}}}
  notes: {{feed: notifications, options: {{webhook_secret: {SECRET}}}}}
  poison: {{feed: "tests.feeds_for_tests:Poison"}}
"""
# Raw bodies, as an attacker sends them: legal JSON (or nearly) that no UTF-8 reader could be sent.
LONE_SURROGATE = b'{"prompt": "hi \\ud800"}'
POISON_BODIES = [
    (LONE_SURROGATE, "$.prompt holds a lone surrogate"),
    (b'{"title": "t", "body": "\\udfff"}', "$.body holds a lone surrogate"),
    (b'{"title": "t", "tags": ["ok", "\\ud83d"]}', "$.tags[1] holds a lone surrogate"),
    (b'{"title": "\\ud800\\ud800"}', "$.title holds a lone surrogate"),
    (b'{"title": "t", "value": NaN}', "NaN is not a JSON number"),
    (b'{"title": "t", "value": -Infinity}', "-Infinity is not a JSON number"),
    (b'{"title": "t", "value": 1e999}', "the number 1e999 is out of range"),
    ('{"title": "t", "raw": "\ud800"}'.encode("utf-8", "surrogatepass"), "is not UTF-8"),
]


@pytest.fixture(scope="module")
def server(upstream, tmp_path_factory):
    factory = ServerFactory(tmp_path_factory.mktemp("poison"))
    yield factory(relay_config(upstream.url, 9, extra=TOPICS), env={"RELAY_TEST_KEY": KEY})
    factory.close()


def readable(http, topic: str) -> list[dict]:
    """The topic's history, read as a browser would: the stream must open (200), be UTF-8, and
    every event's data must be JSON. History is sent at once: a second of quiet ends it."""
    raw = b""
    with http.stream("GET", f"/sse/{topic}", timeout=httpx.Timeout(10, read=1.0)) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        with contextlib.suppress(httpx.ReadTimeout):
            for part in response.iter_bytes():
                raw += part
    events = []
    for block in raw.decode("utf-8").split("\n\n"):  # strict: a bad byte fails here
        data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if data:
            events.append(json.loads("\n".join(data)))
    return events


def post(http, path: str, body: bytes, **headers: str):
    return http.post(path, content=body, headers={"content-type": "application/json", **headers})


@pytest.mark.parametrize(("body", "problem"), POISON_BODIES)
def test_a_prompt_no_reader_could_be_sent_is_refused_naming_the_field(server, body, problem):
    with server.client() as http:
        response = post(http, "/feeds/assistant/prompt", body, authorization=f"Bearer {API}")
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_json" and problem in error["message"], error
        # The topic and every stream that includes it still answer.
        assert (
            http.post(
                "/feeds/assistant/prompt", json={"prompt": "fine"}, headers={"authorization": f"Bearer {API}"}
            ).status_code
            == 202
        )
        readable(http, "assistant")
        with sse_stream(http, "/sse?topic=assistant&topic=notes") as events:
            assert next(iter(events)) is not None


@pytest.mark.parametrize(("body", "problem"), POISON_BODIES)
def test_publish_webhook_and_the_relay_refuse_the_same_input_with_a_400(server, body, problem):
    with server.client() as http:
        published = post(http, "/publish/notes", body, authorization=f"Bearer {PUBLISH}")
        hooked = post(http, "/feeds/notes/webhook", body, authorization=f"Bearer {SECRET}")
        for response in (published, hooked):
            assert response.status_code == 400, response.text
            assert problem in response.json()["error"]["message"]
        chat = body.replace(
            b'{"', b'{"model": "t-echo", "messages": [{"role": "user", "content": "x"}], "', 1
        )
        relayed = post(http, "/v1/chat/completions", chat, authorization=f"Bearer {API}")
        assert relayed.status_code == 400, relayed.text
        assert problem in relayed.json()["error"]["message"], relayed.json()  # OpenAI's error shape
        readable(http, "notes")
    assert "Traceback" not in server.output()


def test_the_attackers_prompt_leaves_the_topic_readable_on_every_stream(server):
    """The finding: a 202 for this body, then 500 on every stream of the topic until it aged out."""
    with server.client() as http:
        refused = post(http, "/feeds/assistant/prompt", LONE_SURROGATE, authorization=f"Bearer {API}")
        assert refused.status_code == 400
        ok = http.post(
            "/feeds/assistant/prompt", json={"prompt": "after"}, headers={"authorization": f"Bearer {API}"}
        )
        assert ok.status_code == 202
        completion = ok.json()["completion"]
        deadline = time.monotonic() + 15
        while not any(
            e.get("completion") == completion and "usage" in e for e in readable(http, "assistant")
        ):
            assert time.monotonic() < deadline, "the good prompt's answer never reached the topic"
            time.sleep(0.1)
        with http.stream("GET", "/sse?topic=assistant&topic=poison") as response:
            assert response.status_code == 200
            assert next(response.iter_lines()).startswith("retry:")
        assert http.get("/").status_code == 200


def test_a_feed_yielding_what_cannot_be_sent_goes_on_and_says_why(server):
    from tests.feeds_for_tests import Poison

    good = len(Poison.BAD) + 1
    with server.client() as http:
        deadline = time.monotonic() + 15
        while True:
            status = http.get("/api/topics").json()["topics"]["poison"]["status"]
            if status["refused"] == len(Poison.BAD):
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
        assert status["restarts"] == 0 and status["state"] == "running", status
        assert status["last_error"].startswith("InvalidEvent: Event.id must be an integer"), status
        statuses, numbers = [], []
        with sse_stream(http, "/sse/poison") as events:
            for sse in events:
                data = json.loads(sse.data)
                if sse.event == "status":
                    statuses.append(data)
                else:
                    numbers.append(data["n"])
                if len(numbers) == good:
                    break
    assert numbers == list(range(1, good + 1)), "every good event arrives, in order"
    # One status for the first refusal (then at most one per 5 s): it names the field at fault.
    first = statuses[0]
    assert first["state"] == "running" and first["refused"] == 1, statuses
    assert first["error"] == (
        "InvalidEvent: event data cannot be sent: "
        "$ holds a lone surrogate (\\ud800), which UTF-8 cannot carry"
    )
    log = server.output()
    assert "feed 'poison' yielded an event that cannot be stored, skipped" in log
    assert "$.value is nan, which JSON cannot hold" in log and "$.value is inf" in log
    assert "has a key of type tuple" in log and "$.a set is a set" in log
    assert "Event.event must be printable text" in log


@pytest.mark.parametrize("model", ["t-surrogate", "m-surrogate"])
def test_a_providers_answer_holding_a_lone_surrogate_reaches_readers_as_valid_text(server, model):
    with server.client() as http:
        if model == "t-surrogate":
            with sse_stream(http, "/sse/odd?replay=0") as events:
                response = http.post(
                    "/feeds/odd/prompt", json={"prompt": "go"}, headers={"authorization": f"Bearer {API}"}
                )
                assert response.status_code == 202
                text = ""
                for sse in events:
                    if sse.event == "token":
                        text += json.loads(sse.data)["text"]
                    if sse.event in ("done", "error"):
                        assert sse.event == "done", sse.data
                        break
            assert "lone \ufffd here " in text, text
            readable(http, "odd")
        # The relay: the same dialect gets the provider's bytes, the other one a valid stream.
        for path, body in (
            ("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "x"}]}),
            (
                "/v1/messages",
                {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "x"}]},
            ),
        ):
            with http.stream(
                "POST", path, json={**body, "stream": True}, headers={"authorization": f"Bearer {API}"}
            ) as response:
                assert response.status_code == 200
                raw = response.read()
            raw.decode("utf-8")  # strict
            payloads = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: {")]
            assert payloads and all(json.loads(p) is not None for p in payloads), raw
            assert b"[a" in raw or b"[am" in raw, raw
