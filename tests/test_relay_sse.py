"""The upstream SSE parser on hostile input: any split, any line ending, comments, multi-line data."""

from __future__ import annotations

import pytest

from dashboard.relay.sse import MAX_LINE, SSEParser, SSEProtocolError

STREAM = (
    b": keepalive\r\n\r\n"
    b'data: {"a": 1}\r\n\r\n'
    b"event: error\ndata: line one\ndata: line two\n\n"
    b"id: 7\rdata:no-space\r\r"
    b":\n"
    b"data: \xc3\xa9t\xc3\xa9\r\n\r\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    (b'{"a": 1}', None),
    (b"line one\nline two", "error"),
    (b"no-space", None),
    ("été".encode(), None),
    (b"[DONE]", None),
]


def parse(parts: list[bytes]) -> tuple[list[tuple[bytes, str | None]], SSEParser]:
    parser = SSEParser()
    events = [e for part in parts for e in parser.feed(part)]
    return [(e.data, e.event) for e in events], parser


def test_whole_stream():
    events, parser = parse([STREAM])
    assert events == EXPECTED and not parser.pending


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_split_anywhere_in_two(cut):
    assert parse([STREAM[:cut], STREAM[cut:]])[0] == EXPECTED


def test_one_byte_at_a_time():
    assert parse([STREAM[i : i + 1] for i in range(len(STREAM))])[0] == EXPECTED


def test_a_cut_off_event_is_pending_not_dispatched():
    events, parser = parse([b'data: {"a": 1}\n\ndata: {"b"'])
    assert events == [(b'{"a": 1}', None)] and parser.pending


def test_a_line_without_end_is_refused_past_the_limit():
    parser = SSEParser()
    with pytest.raises(SSEProtocolError):
        for _ in range(MAX_LINE // 65536 + 2):
            parser.feed(b"x" * 65536)
