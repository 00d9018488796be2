"""Fuzzing the event path with hypothesis: whatever a feed yields, the encoder either refuses it
(InvalidEvent) or makes frames every reader can take; whatever the JSON parser of the request
routes accepts can be stored; and the prompt, publish, webhook and /v1 routes of the real server
answer every input below 500 and leave their topics readable. Bounded in examples, not in time;
the corpus below (inputs that broke or nearly broke something) runs first on every route."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dashboard.errors import HTTPError, InvalidEvent
from dashboard.events import encode_data, encode_frame, event_type
from dashboard.web.errors import parse_json
from tests.test_poison import API, PUBLISH, SECRET, TOPIC, readable, server  # noqa: F401  (fixture)

# Bodies kept from earlier findings and fuzz runs: each is sent to every route on every run.
CORPUS = [
    b'{"prompt": "hi \\ud800"}',
    b'{"prompt": "\\udc00\\ud800"}',
    b'{"prompt": "ok", "x": NaN}',
    b'{"prompt": "ok", "x": Infinity}',
    b'{"prompt": "ok", "x": 1e400}',
    b'{"prompt": "ok", "x": -1e400}',
    b'{"prompt": "' + b"9" * 5000 + b'"}',
    b'{"prompt": 1' + b"0" * 5000 + b"}",
    b"\xef\xbb\xbf" + b'{"prompt": "BOM"}',
    '{"prompt": "utf-16"}'.encode("utf-16"),
    b'{"prompt": "\xed\xa0\x80"}',
    b'{"prompt": "\xff\xfe"}',
    b'{"prompt": "\\u0000 nul and \\u001b escape"}',
    b'{"prompt": "a\\u2028b\\u2029c\\r\\nd"}',
    b'{"prompt": "\\"}',
    b'{"prompt": "x"' + b', "k": 1' * 2000 + b"}",
    b"[" * 65 + b"]" * 65,
    b'{"a":' * 64 + b"1" + b"}" * 64,
    b"",
    b"null",
    b'"just a string"',
    b"[]",
]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
json_like = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers() | st.tuples(st.integers()), inner, max_size=4)
        | st.frozensets(st.integers(), max_size=2)
    ),
    max_leaves=12,
)


@given(json_like)
@example("lone \ud800")
@example({"x": float("nan")})
@example({(1,): "tuple key"})
@settings(max_examples=400, deadline=None)
def test_the_encoder_refuses_or_makes_frames_every_reader_can_take(data):
    try:
        text = encode_data(data)
    except InvalidEvent as exc:
        assert str(exc).startswith("event data cannot be sent: "), exc
        return
    text.encode("utf-8")  # strict
    if not isinstance(data, str):
        json.loads(text)
    frame = encode_frame(text, "message", 1)
    assert frame.endswith(b"\n\n") and frame.decode("utf-8")


@given(st.one_of(st.none(), st.text(max_size=120), st.integers()))
@settings(max_examples=200, deadline=None)
def test_an_event_type_is_printable_or_refused(name):
    try:
        kind = event_type(name)
    except InvalidEvent:
        return
    assert kind.isprintable() and kind.encode("utf-8")


def as_json(value, *, escaped: bool) -> bytes:
    """`value` written as JSON as a careless client would: NaN, surrogates (raw or escaped) and all."""
    text = json.dumps(value, default=repr, skipkeys=True, ensure_ascii=escaped)
    return text.encode("utf-8", "surrogatepass")


json_bodies = st.one_of(
    st.binary(max_size=200),
    json_like.map(lambda v: as_json(v, escaped=False)),
    json_like.map(lambda v: as_json(v, escaped=True)),
)


@given(json_bodies)
@settings(max_examples=400, deadline=None)
def test_what_the_request_parser_accepts_can_be_stored(body):
    try:
        value = parse_json(body)
    except HTTPError as exc:
        assert exc.status == 400 and exc.code == "invalid_json"
        return
    encode_data(value)  # never InvalidEvent: accepted at the door means storable


@pytest.mark.parametrize("body", CORPUS)
def test_the_corpus_is_refused_or_storable(body):
    try:
        value = parse_json(body)
    except HTTPError as exc:
        assert exc.status == 400
        return
    encode_data(value)


def _routes():
    auth = {"authorization": f"Bearer {API}"}
    return [
        (f"/feeds/{TOPIC}/prompt", auth),
        ("/publish/notes", {"authorization": f"Bearer {PUBLISH}"}),
        ("/feeds/notes/webhook", {"authorization": f"Bearer {SECRET}"}),
        ("/v1/chat/completions", auth),
        ("/v1/messages", auth),
        ("/v1/responses", auth),
    ]


JSON = {"content-type": "application/json"}


def _check_answer(response) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        error = response.json()
        assert "error" in error, error


@pytest.mark.parametrize("body", CORPUS)
def test_every_route_answers_the_corpus_below_500(server, body):  # noqa: F811
    with server.client() as http:
        for path, headers in _routes():
            _check_answer(
                http.post(path, content=body, headers={"content-type": "application/json", **headers})
            )


request_bodies = st.one_of(
    json_bodies,
    st.fixed_dictionaries(
        {"prompt": st.text(min_size=1, max_size=40), "title": st.text(min_size=1, max_size=40)},
        optional={"level": st.sampled_from(["info", "error", "nope"]), "extra": json_like},
    ).map(lambda v: as_json(v, escaped=True)),
    st.fixed_dictionaries(
        {
            "model": st.sampled_from(["t-echo", "simulated", "m-echo"]),
            "max_tokens": st.integers(min_value=1, max_value=20),
            "messages": st.lists(
                st.fixed_dictionaries({"role": st.just("user"), "content": st.text(min_size=1, max_size=30)}),
                min_size=1,
                max_size=2,
            ),
        },
        optional={"stream": st.booleans(), "temperature": st.floats(allow_nan=True)},
    ).map(lambda v: json.dumps(v).encode()),
)


@given(request_bodies)
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same 60 bodies each run: a server test that fails, fails again
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_route_answers_generated_bodies_below_500(server, body):  # noqa: F811
    with server.client(timeout=20) as http:
        for path, headers in _routes():
            _check_answer(
                http.post(path, content=body, headers={"content-type": "application/json", **headers})
            )


def test_the_topics_stay_readable_after_the_fuzzing(server):  # noqa: F811
    """Every stream of the fuzzed topics opens (200), is UTF-8 and holds only JSON events (readable()
    fails otherwise), and the fuzzing reached them: the prompts that were taken left events."""
    with server.client() as http:
        histories = {topic: readable(http, topic) for topic in (TOPIC, "notes", "odd")}
    assert histories[TOPIC], "no fuzzed prompt was taken: the routes were not exercised"
    assert "Traceback" not in server.output(), server.output()[-3000:]
