"""The relay's fast path for same-dialect streams (dashboard/relay/forward.py) on hostile input, for
each dialect that has one: the provider's plain events are written as they are, whole and in order,
however the bytes are cut; any other event, and everything after it, is handed to the stream's
parser untouched."""

from __future__ import annotations

import asyncio
import random

import pytest

from dashboard.config import parse_config
from dashboard.relay import dialects
from dashboard.relay.forward import Forward
from dashboard.relay.metrics import Measure
from dashboard.relay.sse import SSEParser
from tests.test_keys import KEY
from tests.test_relay_forward_anthropic import books, received, relay_once
from tests.upstream import PREFIXES, frame, message_event, relay_config

SECRET = b"sk-secret-0123456789"
PLAIN = [
    b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}\n\n',
    b'data: {"id":"c","choices":[{"index":0,"delta":{"content":""},"finish_reason":null}]}\n\n',
    b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"lo \xc3\xa9"},"finish_reason":null}]}\n\n',
]
FINISH = b'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'


def text_delta(text: str, index: int = 0, **other: object) -> bytes:
    """An Anthropic text delta as the API writes it (UTF-8, compact); `other`: keys added at the end."""
    delta = message_event("content_block_delta", index=index, delta={"type": "text_delta", "text": text})
    return frame({**delta, **other}, escape_non_ascii=False)


def delta_of(kind: str, **fields: str) -> bytes:
    """An Anthropic content_block_delta of another kind (thinking_delta, input_json_delta, ...)."""
    return frame(message_event("content_block_delta", index=0, delta={"type": kind, **fields}))


ANTHROPIC_PLAIN = [text_delta("Hel"), text_delta(""), text_delta("lo é")]
ANTHROPIC_FINISH = b"".join(
    frame(e)
    for e in [
        message_event("content_block_stop", index=0),
        message_event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 2}),
        message_event("message_stop"),
    ]
)
STREAMS = {"openai": (PLAIN, FINISH), "anthropic": (ANTHROPIC_PLAIN, ANTHROPIC_FINISH)}
COUNTS = [(1, 3), (0, 0), (1, 5)]  # each plain event's: tokens, and its text's length as written


def run(
    parts: list[bytes],
    *,
    writable: bool = True,
    dialect: str = "openai",
    secrets: tuple[bytes, ...] = (SECRET,),
) -> tuple[bytes, bytes, Measure]:
    """Feed `parts` as a connection would: (what was written, what the reader got, the measure);
    `secrets`: the provider's, to redact (none: a provider configured without a key)."""

    async def go() -> tuple[bytes, bytes, Measure]:
        written: list[bytes] = []
        measure = Measure(model="m")

        def write(data: bytes) -> bool:
            if writable:
                written.append(data)
            return writable

        sink = Forward(write, dialects.get(dialect), list(secrets), measure)
        reader: list[bytes] = []
        for part in parts:
            if reader:  # the sink let go: the rest goes to the reader
                reader.append(part)
                continue
            rest = sink.feed(part)
            if rest is not None:
                reader.append(rest)
        if not reader:  # the sink held on to the end: the reader stops waiting, and takes what it holds
            reader.append(sink.give_back())
        return b"".join(written), b"".join(reader), measure

    return asyncio.run(go())


def cuts(data: bytes, step: int) -> list[bytes]:
    return [data[i : i + step] for i in range(0, len(data), step)]


@pytest.mark.parametrize("secrets", [(SECRET,), ()], ids=["secrets", "no-secrets"])
@pytest.mark.parametrize("dialect", sorted(STREAMS))
@pytest.mark.parametrize("step", [1, 2, 7, 50, 10_000])
def test_plain_events_are_written_whole_in_order_however_cut(dialect, step, secrets):
    """Step 1 and 2 cut inside every character of two bytes, and between Anthropic's `event:` and
    `data:` lines."""
    plain, finish = STREAMS[dialect]
    stream = b"".join(plain) + finish
    written, rest, measure = run(cuts(stream, step), dialect=dialect, secrets=secrets)
    assert written + rest == stream, "every byte once, in order"
    # Whole plain events only; those that arrive with the finish go to the reader with it.
    sent = [e for e in plain if e in written]
    assert written == b"".join(sent) and written == b"".join(plain[: len(sent)]), written
    if step < len(plain[0]):
        assert written == b"".join(plain), "cut small, each plain event is written on its own"
    assert measure.text_chunks == sum(tokens for tokens, _ in COUNTS[: len(sent)])
    assert measure.text_chars == sum(chars for _, chars in COUNTS[: len(sent)])
    assert (measure.first_token_out is not None) == (measure.text_chunks > 0)
    events = [e.data for e in SSEParser().feed(rest)]
    last = [e.data for e in SSEParser().feed(finish)]
    assert events[-len(last) :] == last, "the reader starts on an event"


OTHERS = [
    (
        "openai",
        b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}\n\n',
    ),
    ("openai", b'data: {"error":{"message":"boom"}}\n\n'),
    ("openai", b": keepalive\n\n"),
    ("openai", b'data: {"choices":[{"delta":{"content":"a"},\ndata: "finish_reason":null}]}\n\n'),
    ("openai", PLAIN[0].replace(b"\n", b"\r\n")),
    ("openai", PLAIN[0].replace(b"Hel", SECRET)),
    ("openai", PLAIN[0].replace(b"Hel", b"\xff\xfe")),
    ("openai", PLAIN[0].replace(b"}\n\n", b"\n\n")),  # cut short: not a whole JSON object
    ("anthropic", ANTHROPIC_FINISH),
    ("anthropic", frame(message_event("ping"))),
    ("anthropic", b'event: ping\ndata: {"type": "ping"}\n\n'),
    ("anthropic", frame(message_event("error", error={"type": "overloaded_error", "message": "Overloaded"}))),
    ("anthropic", b": keepalive\n\n"),
    ("anthropic", delta_of("thinking_delta", thinking="hm")),
    ("anthropic", delta_of("signature_delta", signature="sig")),
    ("anthropic", delta_of("input_json_delta", partial_json='{"city":')),
    ("anthropic", text_delta("a", usage={"output_tokens": 3})),
    ("anthropic", text_delta("a").split(b"\n", 1)[1]),  # no `event:` line
    ("anthropic", text_delta("a").replace(b'"index":0,', b'"index": 0, ')),  # spaced
    ("anthropic", text_delta("a").replace(b"\n", b"\r\n")),
    ("anthropic", text_delta("a").replace(b"\n\n", b"\n\n\n")),
    ("anthropic", text_delta("a").replace(b"\ndata", b"\nid: 7\ndata")),
    ("anthropic", text_delta(SECRET.decode())),
    ("anthropic", text_delta("a").replace(b'"a"', b'"\xff\xfe"')),
    ("anthropic", text_delta("a").replace(b"}}\n\n", b"}\n\n")),  # cut short: not a whole JSON object
]


@pytest.mark.parametrize(("dialect", "other"), OTHERS)
def test_any_other_event_goes_to_the_reader_with_all_after_it(dialect, other):
    plain = STREAMS[dialect][0]
    stream = plain[0] + other + plain[1]
    written, rest, _ = run([plain[0], other + plain[1]], dialect=dialect)
    assert written == plain[0]
    assert rest == other + plain[1]
    assert written + rest == stream


@pytest.mark.parametrize(("dialect", "other"), [(d, o) for d, o in OTHERS if SECRET not in o])
def test_with_no_secrets_configured_any_other_event_still_goes_to_the_reader(dialect, other):
    """Bytes that are not UTF-8, above all: a provider configured without a key has no secret to
    look for, and only the check for plain ASCII is left before the write."""
    plain = STREAMS[dialect][0]
    written, rest, _ = run([plain[0], other + plain[1]], dialect=dialect, secrets=())
    assert written == plain[0] and rest == other + plain[1]


@pytest.mark.parametrize("dialect", sorted(STREAMS))
def test_a_client_that_cannot_take_more_gets_nothing_from_the_sink(dialect):
    plain = STREAMS[dialect][0]
    written, rest, measure = run([plain[0], plain[1]], writable=False, dialect=dialect)
    assert written == b"" and rest == plain[0] + plain[1] and measure.text_chunks == 0


@pytest.mark.parametrize("dialect", sorted(STREAMS))
def test_a_part_held_when_the_reader_stops_waiting_is_given_back(dialect):
    plain = STREAMS[dialect][0]
    written, rest, _ = run([plain[0] + plain[1][:10]], dialect=dialect)
    assert written == plain[0] and rest == plain[1][:10]


# Per dialect: bytes around a plain event's text, and the same made a little different.
AROUND = {"openai": (b'"id":"c"', b'"id":"c","role":"a"'), "anthropic": (b'"index":0', b'"index":0,"x":1')}


@pytest.mark.parametrize("dialect", sorted(STREAMS))
def test_a_learned_shape_lets_through_only_what_the_dialect_would(dialect):
    """Once a plain event has taught the sink how the provider writes them, a later event with the
    same bytes around its text is taken without the dialect's check: only when that check would
    have taken it too, with the same count of tokens and text."""
    plain = STREAMS[dialect][0]
    check = dialects.get(dialect).plain_events
    prefix, suffix = plain[0].split(b"Hel")
    pieces = [b"a", b"\xc3\xa9", b'"', b'\\"', b"\\\\", b"\\", b"\n", b"\n\n", b"}", b"{", b"", b" "]
    pieces += [b'"role":"x', b'","usage":{', b'"finish_reason":"stop', b"data: {", b"event: ", suffix, prefix]
    rng = random.Random(7)
    taken = 0
    for n in range(3000):
        text = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 4)))
        event = prefix + text + suffix
        if n == 0:  # shorter than the shape: it starts with its start and ends with its end, overlapping
            event = prefix + suffix[1:]
        elif rng.random() < 0.1:  # the bytes around the text a little different, too
            event = event.replace(*AROUND[dialect])
        written, rest, measure = run([plain[0], event], dialect=dialect)
        if written == plain[0] + event:
            taken += 1
            assert check(event) == (measure.text_chunks - 1, measure.text_chars - 3), event
        else:
            assert written == plain[0] and rest == event, event
    assert taken > 300, "the common case, a text with no quote or line end, is taken"


@pytest.mark.parametrize("dialect", sorted(STREAMS))
def test_events_read_together_are_taken_by_their_shape_only_as_the_dialect_would(dialect):
    """Two to four events in one read (the relay fell behind): each checked against the learnt
    shape, the read taken only when the dialect's check of all of them takes it, with its counts."""
    plain = STREAMS[dialect][0]
    check = dialects.get(dialect).plain_events
    prefix, suffix = plain[0].split(b"Hel")
    pieces = [b"a", b"\xc3\xa9", b'"', b"\\", b"\n", b"}", b"", b" ", b'"finish_reason":"stop']
    pieces += [suffix, prefix]
    rng = random.Random(11)
    taken = 0
    for _ in range(1500):
        events = []
        for _ in range(rng.randint(2, 4)):
            text = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 3)))
            event = prefix + text + suffix
            events.append(event.replace(*AROUND[dialect]) if rng.random() < 0.05 else event)
        read = b"".join(events)
        written, rest, measure = run([plain[0], read], dialect=dialect, secrets=())
        if written == plain[0] + read:
            taken += 1
            assert check(read) == (measure.text_chunks - 1, measure.text_chars - 3), read
        else:
            assert written == plain[0] and rest == read and check(read) is None, read
    assert taken > 100, "reads of plain events are taken"

    async def checks_made() -> int:  # reads of plain events taken by their shape: no dialect check
        calls = []

        def counted(events: bytes) -> tuple[int, int] | None:
            calls.append(events)
            return check(events)

        sink = Forward(lambda data: True, dialects.get(dialect), [], Measure(model="m"))
        sink.plain = counted
        assert sink.feed(plain[0]) is None and len(calls) == 1  # the shape learnt
        assert sink.feed(plain[0] * 3) is None
        assert sink.feed(plain[0] + plain[1]) is None
        return len(calls)

    assert asyncio.run(checks_made()) == 1
    for extra in (plain[0] + b"\n", plain[0] * 2 + b"\n"):  # a line end after the blank line
        written, rest, _ = run([plain[0], extra], dialect=dialect, secrets=())
        assert written == plain[0] and rest == extra and check(extra) is None, extra


@pytest.mark.parametrize("dialect", sorted(STREAMS))
def test_a_plain_event_with_text_teaches_the_bytes_around_its_text(dialect):
    plain = STREAMS[dialect][0]

    async def go() -> tuple[bytes, bytes] | None:
        sink = Forward(lambda data: True, dialects.get(dialect), [], Measure(model="m"))
        sink.feed(plain[1])  # no text: nothing to learn from
        assert sink.shape is None
        sink.feed(plain[0])
        return sink.shape

    assert asyncio.run(go()) == tuple(plain[0].split(b"Hel"))


# -- in a stream: the sink takes over only where an event starts -----------------------------------
@pytest.fixture
def ai(upstream, monkeypatch):
    monkeypatch.setenv("RELAY_TEST_KEY", KEY)
    return parse_config(relay_config(upstream.url, 9, extra="topics: {}")).ai


@pytest.mark.parametrize("dialect", sorted(STREAMS))
def test_an_event_line_arriving_alone_is_parsed_with_the_data_after_it(ai, dialect):
    """`event: error` on its own, then a plain text event: SSE makes them one event, which the parser
    reads as an error. The sink must not write the text on as a plain event of its own (and leave
    the parser to put the `event:` on a later event)."""
    model = f"{PREFIXES[dialect][0]}-event-apart"
    fast, fast_measure = relay_once(ai, model, client=dialects.get(dialect))
    slow, slow_measure = relay_once(ai, model, forward=False, client=dialects.get(dialect))
    assert received(fast) == received(slow), received(fast)
    assert books(fast_measure) == books(slow_measure)
