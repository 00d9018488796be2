"""The relay's fast path for same-dialect streams (dashboard/relay/forward.py) on hostile input: the
provider's plain events are written as they are, whole and in order, however the bytes are cut; any
other event, and everything after it, is handed to the stream's parser untouched."""

from __future__ import annotations

import asyncio
import random

import pytest

from dashboard.relay import dialects
from dashboard.relay.forward import Forward
from dashboard.relay.metrics import Measure
from dashboard.relay.sse import SSEParser

SECRET = b"sk-secret-0123456789"
PLAIN = [
    b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}\n\n',
    b'data: {"id":"c","choices":[{"index":0,"delta":{"content":""},"finish_reason":null}]}\n\n',
    b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"lo \xc3\xa9"},"finish_reason":null}]}\n\n',
]
FINISH = b'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'


def run(parts: list[bytes], *, writable: bool = True) -> tuple[bytes, bytes, Measure]:
    """Feed `parts` as a connection would: (what was written, what the reader got, the measure)."""

    async def go() -> tuple[bytes, bytes, Measure]:
        written: list[bytes] = []
        measure = Measure(model="m")

        def write(data: bytes) -> bool:
            if writable:
                written.append(data)
            return writable

        sink = Forward(write, dialects.get("openai"), [SECRET], measure)
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


@pytest.mark.parametrize("step", [1, 2, 7, 50, 10_000])
def test_plain_events_are_written_whole_in_order_however_cut(step):
    stream = b"".join(PLAIN) + FINISH
    written, rest, measure = run(cuts(stream, step))
    assert written + rest == stream, "every byte once, in order"
    # Whole plain events only; those that arrive with the finish go to the reader with it.
    sent = [e for e in PLAIN if e in written]
    assert written == b"".join(sent) and written == b"".join(PLAIN[: len(sent)]), written
    if step < len(PLAIN[0]):
        assert written == b"".join(PLAIN), "cut small, each plain event is written on its own"
    assert measure.text_chunks == sum(b'"content":""' not in e for e in sent)
    assert measure.text_chars == sum(len(e.split(b'"content":"')[1].split(b'"')[0]) for e in sent)
    assert (measure.first_token_out is not None) == (measure.text_chunks > 0)
    events = SSEParser().feed(rest)
    finish = FINISH.split(b"\n\n")[0].removeprefix(b"data: ")
    assert [e.data for e in events][-2:] == [finish, b"[DONE]"], "the reader starts on an event"


@pytest.mark.parametrize(
    "other",
    [
        b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}\n\n',
        b'data: {"error":{"message":"boom"}}\n\n',
        b": keepalive\n\n",
        b'data: {"choices":[{"delta":{"content":"a"},\ndata: "finish_reason":null}]}\n\n',
        PLAIN[0].replace(b"\n", b"\r\n"),
        PLAIN[0].replace(b"Hel", SECRET),
        PLAIN[0].replace(b"Hel", b"\xff\xfe"),
        PLAIN[0].replace(b"}\n\n", b"\n\n"),  # cut short: not a whole JSON object
    ],
)
def test_any_other_event_goes_to_the_reader_with_all_after_it(other):
    stream = PLAIN[0] + other + PLAIN[1]
    written, rest, _ = run([PLAIN[0], other + PLAIN[1]])
    assert written == PLAIN[0]
    assert rest == other + PLAIN[1]
    assert written + rest == stream


def test_a_client_that_cannot_take_more_gets_nothing_from_the_sink():
    written, rest, measure = run([PLAIN[0], PLAIN[1]], writable=False)
    assert written == b"" and rest == PLAIN[0] + PLAIN[1] and measure.text_chunks == 0


def test_a_part_held_when_the_reader_stops_waiting_is_given_back():
    written, rest, _ = run([PLAIN[0] + PLAIN[1][:10]])
    assert written == PLAIN[0] and rest == PLAIN[1][:10]


def test_a_learned_shape_lets_through_only_what_the_dialect_would():
    """Once a plain event has taught the sink how the provider writes them, a later event with the
    same bytes around its text is taken without the dialect's check: only when that check would
    have taken it too, with the same count of tokens and text."""
    openai = dialects.get("openai")
    prefix, suffix = PLAIN[0].split(b"Hel")
    pieces = [b"a", b"\xc3\xa9", b'"', b'\\"', b"\\\\", b"\\", b"\n", b"\n\n", b"}", b"{", b"", b" "]
    pieces += [b'"role":"x', b'","usage":{', b'"finish_reason":"stop', b"data: {", suffix, prefix]
    rng = random.Random(7)
    taken = 0
    for n in range(3000):
        text = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 4)))
        event = prefix + text + suffix
        if n == 0:  # shorter than the shape: it starts with its start and ends with its end, overlapping
            event = prefix + suffix[1:]
        elif rng.random() < 0.1:  # the bytes around the text a little different, too
            event = event.replace(b'"id":"c"', b'"id":"c","role":"a"')
        written, rest, measure = run([PLAIN[0], event])
        if written == PLAIN[0] + event:
            taken += 1
            assert openai.plain_events(event) == (measure.text_chunks - 1, measure.text_chars - 3), event
        else:
            assert written == PLAIN[0] and rest == event, event
    assert taken > 300, "the common case, a text with no quote or line end, is taken"
