"""Resume with Last-Event-ID: no loss and no duplicate across many reconnects while events flow."""

import random
import time

import pytest

from tests.support import REDIS_URL, read_events

CONFIG = """
broker: {history: 100000}
topics:
  fast: {feed: "tests.sample_feeds:Ticker", options: {rate_hz: 200}}
  slow: {feed: "tests.sample_feeds:Ticker", options: {rate_hz: 40}}
"""


def assert_contiguous(numbers: list[int], what: str) -> None:
    assert numbers, f"no events seen on {what}"
    expected = list(range(numbers[0], numbers[0] + len(numbers)))
    missing = sorted(set(expected) - set(numbers))
    dupes = len(numbers) - len(set(numbers))
    assert numbers == expected, f"{what}: {len(missing)} missing (first {missing[:5]}), {dupes} duplicated"


@pytest.mark.parametrize("path", ["/sse/fast", "/sse?topic=fast&topic=slow"], ids=["single", "mux"])
def test_random_reconnects_lose_nothing_and_repeat_nothing(serve, path):
    rng = random.Random(1234)
    server = serve(CONFIG)
    seen: list[tuple[str, int, int]] = []  # (event name, id, n)
    last_id = None
    sep = "&" if "?" in path else "?"
    with server.client() as client:
        for _ in range(25):
            headers = {"Last-Event-ID": last_id} if last_id else {}
            url = path if last_id else f"{path}{sep}replay=0"
            for event in read_events(client, url, rng.randint(1, 40), headers=headers):
                seen.append((event.event, int(event.id), event.json()["n"]))
                last_id = event.id
            time.sleep(rng.uniform(0, 0.05))  # events keep flowing while we are away

    ids = [i for _, i, _ in seen]
    assert ids == sorted(ids) and len(ids) == len(set(ids)), "ids repeat or go backwards"
    for name in {e for e, _, _ in seen}:
        assert_contiguous([n for e, _, n in seen if e == name], name)
    if "topic=" in path:
        assert {e for e, _, _ in seen} == {"fast", "slow"}


def broker_line(request, broker: str) -> str:
    """The config's broker: memory://, or the test Redis under a key prefix of this test's own."""
    if broker == "memory":
        return 'broker: {url: "memory://"}'
    return f'broker: {{url: "{REDIS_URL}", prefix: "{request.getfixturevalue("redis_prefix")}"}}'


@pytest.mark.parametrize("broker", ["memory", "redis"])
@pytest.mark.parametrize("path", ["/sse/t", "/sse?topic=t&topic=u"], ids=["single", "mux"])
def test_resume_from_an_id_older_than_history_says_events_were_lost(request, serve, broker, path):
    server = serve(
        f"""
        {broker_line(request, broker)}
        topics:
          t: {{feed: "tests.sample_feeds:Ticker", options: {{rate_hz: 100}}, history: 5}}
          u: {{feed: "tests.sample_feeds:Ticker", options: {{rate_hz: 1}}}}
        """
    )
    gap = "t:gap" if "topic=" in path else "gap"
    with server.client() as client:
        first = read_events(client, "/sse/t", 1)[0]
        read_events(client, "/sse/t?replay=0", 10)  # let more than `history` events pass
        lost, *replayed = read_events(
            client, path, 6, headers={"Last-Event-ID": first.id}, skip=("status", "u")
        )
        assert lost.event == gap and lost.json()["reason"] == "expired", (lost.event, lost.data)
        ns = [e.json()["n"] for e in replayed if e.event in ("message", "t")]
        assert ns == list(range(ns[0], ns[0] + len(ns))) and ns[0] > first.json()["n"] + 1
        assert int(lost.id) < int(replayed[0].id), "the gap event's id is where the replay starts"


@pytest.mark.parametrize("broker", ["memory", "redis"])
@pytest.mark.parametrize("path", ["/sse/t", "/sse?topic=t"], ids=["single", "mux"])
def test_resume_from_an_id_ahead_of_the_server_replays_history_and_says_so(request, serve, broker, path):
    server = serve(
        f"""
        {broker_line(request, broker)}
        topics:
          t: {{feed: "tests.sample_feeds:Ticker", options: {{rate_hz: 50}}}}
        """
    )
    gap = "t:gap" if "topic=" in path else "gap"
    with server.client() as client:
        newest = read_events(client, "/sse/t", 3)[-1]
        ahead = str(int(newest.id) + 10**12)  # another server's id, or one from before a wipe
        told, *events = read_events(client, path, 8, headers={"Last-Event-ID": ahead})
        assert told.event == gap and told.json()["reason"] == "unknown_id", (told.event, told.data)
        assert ahead in told.json()["message"]
        # History first (from the first event), then live: the stream is not silent.
        assert events[0].json()["n"] == 1 and int(events[-1].id) > int(newest.id)


def test_fresh_connection_replays_history_then_goes_live(serve):
    server = serve(
        """
        topics:
          t: {feed: "tests.sample_feeds:Ticker", options: {rate_hz: 50}, history: 20}
        """
    )
    with server.client() as client:
        read_events(client, "/sse/t?replay=0", 25)  # history is full now
        events = read_events(client, "/sse/t", 30)
        ns = [e.json()["n"] for e in events]
        assert_contiguous(ns, "t")
        assert ns[0] > 1, "history should have been trimmed to the newest 20"
        limited = [e.json()["n"] for e in read_events(client, "/sse/t?replay=3", 3)]
        # the newest 3 when it opened: in order, and none older than what was already seen
        assert limited == list(range(limited[0], limited[0] + 3)) and limited[0] >= ns[-1] - 2, (limited, ns)


@pytest.mark.parametrize("path", ["/sse/a?replay=3", "/sse?topic=a&topic=b&replay=3"], ids=["single", "mux"])
def test_replay_n_gives_the_newest_n_of_each_topics_history_in_order(serve, path):
    server = serve(
        """
        auth: {publish_tokens: ["replay-token"]}
        topics:
          a: {feed: notifications}
          b: {feed: notifications}
        """
    )
    published = {}
    with server.client() as client:
        for topic in ("a", "b"):
            items = [{"title": f"{topic}{n}"} for n in range(8)]
            answer = client.post(
                f"/publish/{topic}", json=items, headers={"Authorization": "Bearer replay-token"}
            )
            assert answer.status_code == 202, answer.text
            published[topic] = answer.json()["ids"]
        topics = ["a", "b"] if "topic=" in path else ["a"]
        events = read_events(client, path, 3 * len(topics))
        for topic in topics:
            got = [int(e.id) for e in events if e.event in (topic, "message")]
            assert got == published[topic][-3:], f"{topic}: replayed {got}, published {published[topic]}"


def test_last_event_id_as_query_parameter(serve):
    server = serve('topics: {t: {feed: "tests.sample_feeds:Ticker", options: {rate_hz: 50}}}')
    with server.client() as client:
        first = read_events(client, "/sse/t", 3)
        resumed = read_events(client, f"/sse/t?last_event_id={first[0].id}", 2)
        assert [e.id for e in resumed] == [e.id for e in first[1:]]


@pytest.mark.parametrize("broker", ["memory", "redis"])
def test_ids_keep_increasing_across_a_server_restart(request, serve, broker):
    """A feed's and a publish's ids after a restart are above every id given before it, and a
    reader resuming with its last id from before goes on with newer ones."""
    server = serve(
        f"""
        {broker_line(request, broker)}
        auth: {{publish_tokens: ["restart-token"]}}
        topics:
          t: {{feed: "tests.sample_feeds:Ticker", options: {{rate_hz: 50}}}}
          pushed: {{feed: notifications}}
        """
    )
    auth = {"Authorization": "Bearer restart-token"}

    def ids_now() -> list[int]:
        with server.client() as client:
            answer = client.post("/publish/pushed", json={"title": "hello"}, headers=auth)
            assert answer.status_code == 202, answer.text
            published = answer.json()["ids"]
            ticks = [int(e.id) for e in read_events(client, "/sse/t?replay=0", 3)]
        return [*published, *ticks]

    before = ids_now()
    server.restart()
    after = ids_now()
    assert min(after) > max(before), f"ids before the restart {before}, after {after}"
    with server.client() as client:
        resumed = read_events(
            client, "/sse/t", 2, headers={"Last-Event-ID": str(max(before))}, skip=("status", "gap")
        )
    assert all(int(e.id) > max(before) for e in resumed), [e.id for e in resumed]
