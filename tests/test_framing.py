"""SSE framing: data with any line breaks cannot forge id:/event:/retry: fields."""

import re

import pytest
from httpx_sse._decoders import SSEDecoder

from dashboard.events import Message, encode_data, encode_frame
from dashboard.web.sink import wire
from tests.sample_feeds import Hostile
from tests.support import read_events

HOSTILE = [*Hostile.STRINGS, "\n", "\r\n\r\n", "data: x\n\nid: 7", "a\u2028b", "é ünïcode 😀"]


def decode(frame: bytes):
    """Parse a frame the way the SSE spec (and a browser) does: lines end at CR, LF or CRLF only."""
    assert frame.endswith(b"\n\n"), frame
    decoder = SSEDecoder()
    events = []
    for line in re.split(r"\r\n|\r|\n", frame.decode())[:-1]:
        sse = decoder.decode(line)
        if sse is not None:
            events.append(sse)
    return events


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_data_roundtrips_as_one_event(text):
    [sse] = decode(encode_frame(text, "message", 42))
    assert sse.id == "42"
    assert sse.event == "message"
    assert sse.data == text.replace("\r\n", "\n").replace("\r", "\n")


@pytest.mark.parametrize("name", ["a\nevent: b", "a\r\nid: 3", "a\rretry: 1"])
def test_event_type_and_id_cannot_break_lines(name):
    [sse] = decode(encode_frame("x", name, f"5\n{name}"))
    assert sse.event == name.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
    assert sse.data == "x"
    assert "\n" not in sse.id


def test_message_encodes_both_frames_once():
    message = Message.build(7, "chat", "token", encode_data({"text": "a\nb"}), 0.0)
    frames = wire(message)
    assert wire(message) is frames, "encoded again for a second subscriber"
    [single] = decode(frames[0])
    [mux] = decode(frames[1])
    assert (single.event, mux.event) == ("token", "chat:token")
    assert single.data == mux.data == '{"text":"a\\nb"}'
    assert frames[2] == b"%x\r\n%s\r\n" % (len(frames[0]), frames[0])
    plain = Message.build(8, "chat", None, "hi", 0.0)
    assert decode(wire(plain)[1])[0].event == "chat"


def test_hostile_strings_through_the_server(serve):
    server = serve(
        """
        topics:
          evil: {feed: "tests.sample_feeds:Hostile"}
        """
    )
    expected = [t.replace("\r\n", "\n").replace("\r", "\n") for t in Hostile.STRINGS]
    with server.client() as client:
        events = read_events(client, "/sse/evil", len(expected) + 1)
        assert [e.data for e in events[:-1]] == expected
        assert all(e.event == "message" for e in events[:-1])
        assert events[-1].event == "typed event: forged"
        assert events[-1].json() == {"text": "json\nwith\r\nbreaks"}
        ids = [int(e.id) for e in events]
        assert ids == sorted(set(ids)), f"ids not strictly increasing: {ids}"
        mux = read_events(client, "/sse?topic=evil", len(expected) + 1)
        assert [e.data for e in mux[:-1]] == expected
        assert {e.event for e in mux[:-1]} == {"evil"}
        assert mux[-1].event == "evil:typed event: forged"
