"""The durable default broker (sqlite:///dashboard.db in the folder the server starts in), through
the real server, real files and real signals: nothing acknowledged is lost to `kill -9`, ids keep
increasing across a restart, a browser resumes exactly, a spent budget stays spent, a firing alert
stays firing, a claimed webhook stays claimed, what requests in flight held is charged, a topic
dropped and configured again reports its loss, the file stays within the topics' history, and a
file that cannot be used stops the server with one line naming it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading

import httpx
import openai
import pytest

from dashboard.broker import Broker, from_url
from dashboard.broker.sqlite import store
from dashboard.errors import BrokerUnavailable
from dashboard.events import Event
from dashboard.relay.ledger import DAY, Ledger, Limits, Reservation
from dashboard.web.sink import StreamSink
from tests.support import ROOT, read_events, sse_stream
from tests.test_alerts import HOOK_SECRET, Receiver, receiving
from tests.test_broker_contract import take
from tests.test_keys import BUDGET_USD, HI, KEY, TEAM, keys_config, openai_sdk
from tests.test_notifications import CONFIG as NOTIFICATIONS
from tests.test_notifications import REPO, github

PUSH = "push-token-for-durable-tests"
INBOX = f"""
auth: {{publish_tokens: [{PUSH}]}}
topics:
  inbox: {{feed: "tests.sample_feeds:PlainInbox", history: 100000}}
  ticks: {{feed: "tests.sample_feeds:Ticker", options: {{rate_hz: 200}}, history: 100000}}
"""


def kill_and_restart(server) -> None:
    """`kill -9`, then start again on the same port, in the same folder (the same file)."""
    server.stop(signal.SIGKILL)
    server.log.write_text(server.output() + "\n--- killed ---\n")
    server.start()


def stored(server, topic: str) -> list[tuple[int, dict]]:
    """(id, data) of every event `topic` holds, oldest first: up to a marker published now."""
    with server.client() as http:
        marker = http.post(
            f"/publish/{topic}", json={"marker": True}, headers={"Authorization": f"Bearer {PUSH}"}
        )
        assert marker.status_code == 202, marker.text
        last = marker.json()["ids"][-1]
        events = []
        with sse_stream(http, f"/sse/{topic}") as stream:
            for sse in stream:
                if sse.event == "message":
                    events.append((int(sse.id), sse.json()))
                if int(sse.id) >= last:
                    return events
    raise AssertionError(f"the stream of {topic} ended before its marker")


def test_kill_9_under_load_loses_nothing_acknowledged_and_a_reader_resumes_exactly(serve):
    server = serve(INBOX)
    acknowledged: dict[int, int] = {}  # id -> n, of every publish answered 202
    stop = threading.Event()

    def publisher(k: int) -> None:
        with server.client(timeout=5) as http:
            for n in range(k * 1_000_000, k * 1_000_000 + 100_000):
                if stop.is_set():
                    return
                try:
                    answer = http.post(
                        "/publish/inbox", json={"n": n}, headers={"Authorization": f"Bearer {PUSH}"}
                    )
                except httpx.HTTPError:
                    return  # killed mid-request: not acknowledged
                if answer.status_code == 202:
                    acknowledged[answer.json()["ids"][0]] = n

    threads = [threading.Thread(target=publisher, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    with server.client() as http:
        seen = read_events(http, "/sse/inbox?replay=0", 200)  # a reader, mid-stream
        ticks = read_events(http, "/sse/ticks", 20)  # and a feed's events, delivered so stored
    server.stop(signal.SIGKILL)  # under load
    stop.set()
    for thread in threads:
        thread.join(10)
    assert len(acknowledged) >= 200, "the load did not run"
    server.log.write_text(server.output() + "\n--- killed ---\n")
    server.start()

    after = stored(server, "inbox")
    ids = [i for i, _ in after]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "ids repeat or go backwards"
    kept = dict(after)
    lost = {i: n for i, n in acknowledged.items() if kept.get(i) != {"got": {"n": n}}}
    assert not lost, (
        f"{len(lost)} of {len(acknowledged)} acknowledged events lost, e.g. {list(lost.items())[:3]}"
    )
    assert kept[ids[-1]] == {"got": {"marker": True}} and ids[-1] > max(acknowledged), (
        "ids did not keep growing"
    )

    last_seen = seen[-1].id
    expected = [i for i in ids if i > int(last_seen)][:50]
    with server.client() as http:
        resumed = read_events(http, "/sse/inbox", len(expected), headers={"Last-Event-ID": last_seen})
    assert [(e.event, int(e.id)) for e in resumed] == [("message", i) for i in expected], "no gap, no loss"

    with server.client() as http:
        ticks_after = read_events(http, "/sse/ticks", len(ticks) + 1)
    assert [(e.id, e.data) for e in ticks_after[: len(ticks)]] == [(e.id, e.data) for e in ticks]


def test_a_spent_daily_budget_is_still_spent_after_kill_9(upstream, serve):
    keys = f"    - {{name: team-a, token: {TEAM}, daily_usd: {BUDGET_USD}}}\n"
    server = serve(keys_config(upstream, keys), env={"RELAY_TEST_KEY": KEY})
    client = openai_sdk(server, TEAM)
    answered = 0
    with pytest.raises(openai.RateLimitError) as refused:
        for _ in range(10):
            client.chat.completions.create(model="t-echo", messages=HI, max_tokens=10)
            answered += 1
    assert refused.value.code == "budget_exceeded" and answered == 4, (answered, refused.value)
    kill_and_restart(server)
    with pytest.raises(openai.RateLimitError) as still:
        openai_sdk(server, TEAM).chat.completions.create(model="t-echo", messages=HI, max_tokens=10)
    assert still.value.code == "budget_exceeded", still.value
    assert int(still.value.response.headers["retry-after"]) > 1, (
        "spent, not held: no room before the day ends"
    )


def test_a_firing_alert_stays_firing_after_a_restart_and_is_not_announced_again(serve):
    with receiving(Receiver()) as receiver:
        server = serve(
            f"""
            auth: {{publish_tokens: [{PUSH}]}}
            topics:
              load: {{feed: "tests.sample_feeds:PlainInbox"}}
              inbox: {{feed: notifications}}
            alerts:
              - {{name: load-high, topic: load, field: got.cpu.percent, above: 90, for: 0, notify: inbox,
                  webhooks: [{{url: "{receiver.url}", secret: "{HOOK_SECRET}"}}]}}
            """
        )
        with server.client() as http:
            http.post(
                "/publish/load", json={"cpu": {"percent": 95}}, headers={"Authorization": f"Bearer {PUSH}"}
            )
            receiver.wait_for(1)
            before = http.get("/api/alerts").json()["alerts"]["load-high"]
        assert before["state"] == "firing", before
        kill_and_restart(server)
        with server.client() as http:
            after = http.get("/api/alerts").json()["alerts"]["load-high"]
            assert (after["state"], after["since"], after["value"]) == ("firing", before["since"], 95), after
            receiver.assert_no_more(1)
            http.post(
                "/publish/load", json={"cpu": {"percent": 10}}, headers={"Authorization": f"Bearer {PUSH}"}
            )
            assert json.loads(receiver.wait_for(2)[1]["body"])["type"] == "alert.resolved"
            notices = [e.json() for e in read_events(http, "/sse/inbox", 2, skip=("status", "alert"))]
            assert [n["state"] for n in notices] == ["firing", "resolved"], "one notification of each"


def test_a_claimed_webhook_delivery_is_still_a_duplicate_after_kill_9(serve):
    server = serve(NOTIFICATIONS)
    payload = {"action": "opened", "repository": REPO, "issue": {"number": 1, "title": "Once"}}
    with server.client() as http:
        assert github(http, "issues", payload, delivery="d-1").json()["duplicates"] == 0
    kill_and_restart(server)
    with server.client() as http:
        again = github(http, "issues", payload, delivery="d-1")
        assert again.status_code == 202 and again.json()["duplicates"] == 1, again.text


def test_the_file_keeps_each_topic_within_its_history(serve):
    server = serve('topics: {t: {feed: "tests.sample_feeds:Ticker", options: {rate_hz: 500}, history: 5}}\n')
    with server.client() as http:
        read_events(http, "/sse/t?replay=0", 300)
    server.stop()
    database = server.home / "dashboard.db"
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT count(*) FROM events WHERE topic = 't'").fetchone()[0]
    assert rows == 5, f"{rows} rows kept of topic t (history: 5)"
    assert database.stat().st_size < 100_000, database.stat().st_size


def test_what_requests_in_flight_held_when_the_process_stopped_is_counted_as_spent(tmp_path):
    async def scenario() -> dict:
        url = f"sqlite:///{tmp_path}/ledger.db"
        broker = from_url(url)
        await broker.connect()
        held = await Ledger(broker).reserve("team", "m", Limits(daily_nusd=100), 10, 40)
        assert isinstance(held, Reservation), held
        await broker.disconnect()  # never settled: as if the process died mid-request
        again = from_url(url)
        await again.connect()
        try:
            return (await Ledger(again).spend())["keys"]["team"]
        finally:
            await again.disconnect()

    assert asyncio.run(scenario()) == {"nusd": 40, "reserved": 0}


def test_a_settlement_whose_write_failed_is_on_disk_once_a_later_one_is_written(tmp_path, monkeypatch):
    """A settlement writes only its own day: one whose write failed (the disk full, say) is written
    with the next write, so the file catches up, even when the next settlement is on another day
    (past midnight) and the key has no limits (it never reserves, which writes every day)."""
    real, failing = store._transaction, [True]

    def once_failing(db, statements):
        if failing[0]:
            failing[0] = False
            raise sqlite3.OperationalError("database or disk is full")
        return real(db, statements)

    monkeypatch.setattr(store, "_transaction", once_failing)
    today = 20000

    def settled(day: int) -> Reservation:  # a key with no limits: settled without a reservation
        return Reservation("team", "m", 0, 0, day * DAY, day)

    async def scenario() -> tuple[dict, dict]:
        url = f"sqlite:///{tmp_path}/ledger.db"
        broker = from_url(url)
        await broker.connect()
        ledger = Ledger(broker)
        with pytest.raises(BrokerUnavailable):
            await ledger.settle(settled(today), 10, 20, 1000)  # counted, not written
        await ledger.settle(settled(today + 1), 1, 1, 1)
        in_memory = {day: dict(counters) for day, counters in broker.books.days.items()}
        await broker.disconnect()
        again = from_url(url)
        await again.connect()
        try:
            return in_memory, {day: dict(counters) for day, counters in again.books.days.items()}
        finally:
            await again.disconnect()

    in_memory, on_disk = asyncio.run(scenario())
    assert on_disk == in_memory and on_disk[today]["k|team|nusd"] == 1000, on_disk


def test_a_topic_dropped_at_a_start_and_configured_again_tells_a_resuming_reader_it_lost_events(tmp_path):
    async def connected(*topics: str) -> Broker:
        broker = from_url(f"sqlite:///{tmp_path}/topics.db")
        for topic in topics:
            broker.add_topic(topic)
        await broker.connect()
        return broker

    async def scenario() -> list[tuple[int, str, str]]:
        broker = await connected("a", "b")
        first = await broker.publish("b", Event({"n": 1}))
        await broker.publish("b", Event({"n": 2}))
        await broker.disconnect()
        await (await connected("a")).disconnect()  # b is no longer configured: its events go
        broker = await connected("a", "b")
        try:
            sub = await broker.subscribe(["b"], first.id, sink=StreamSink())
            return await take(sub, 1)
        finally:
            await broker.disconnect()

    [(_, event, data)] = asyncio.run(scenario())
    assert event == "gap" and json.loads(data)["reason"] == "expired", (event, data)


def start_refused(home, config: str = "topics: {a: {feed: demo}}\n") -> str:
    """Start `dashboard serve` in `home`; its output once it exited (failing if it started)."""
    path = home / "config.yaml"
    path.write_text(config)
    run = subprocess.run(
        [sys.executable, "-m", "dashboard", "serve", "--config", str(path), "--port", "0"],
        cwd=home,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    return run.stdout + run.stderr


def test_a_damaged_file_stops_the_server_with_one_line_naming_it(tmp_path):
    (tmp_path / "dashboard.db").write_bytes(b"\x13\x37 not a database" * 500)
    output = start_refused(tmp_path)
    assert "Traceback" not in output and output.count("\n") == 1, output
    assert f"refusing to start: {tmp_path / 'dashboard.db'} is not a dashboard database" in output, output


def test_a_file_in_a_missing_folder_stops_the_server_with_one_line_naming_it(tmp_path):
    output = start_refused(tmp_path, 'broker: {url: "sqlite:///nowhere/events.db"}\ntopics: {}\n')
    assert "Traceback" not in output and output.count("\n") == 1, output
    assert f"cannot open {tmp_path / 'nowhere' / 'events.db'}" in output, output


def test_a_second_server_on_the_same_file_is_refused(serve):
    server = serve("topics: {a: {feed: demo}}\n")
    output = start_refused(server.home)
    assert "Traceback" not in output and output.count("\n") == 1, output
    assert f"{server.home / 'dashboard.db'} is in use by another process" in output, output
    assert server.proc.poll() is None and server.client().get("/healthz").status_code == 200
