"""Reloading the config without a restart: SIGHUP, `dashboard reload`, `serve --watch`; real
server processes, real files, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import httpx
from httpx_sse import connect_sse

from tests.support import REDIS_URL, ROOT, wait_for

COUNTER = "tests.feeds_for_tests:Counter"
BEFORE = f"""
topics:
  steady: {{feed: "{COUNTER}", options: {{interval: 0.05}}}}
  gone: {{feed: "{COUNTER}", options: {{interval: 0.05}}}}
  changes: {{feed: "{COUNTER}", options: {{interval: 0.05}}}}
"""
AFTER = f"""
topics:
  steady: {{feed: "{COUNTER}", options: {{interval: 0.05}}}}
  changes: {{feed: "{COUNTER}", options: {{interval: 0.04}}}}
  fresh: {{feed: "{COUNTER}", options: {{interval: 0.05}}}}
"""


def status(server) -> dict:
    return httpx.get(f"{server.url}/healthz", timeout=5).json()["config"]


class Reader(threading.Thread):
    """Reads one stream on one connection until told to stop: every event, ids and all."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.events: list[tuple[str, str, str]] = []  # (event, id, data)
        self.ended = False  # the server ended the stream
        self.stop = threading.Event()
        self.opened = threading.Event()

    def run(self) -> None:
        try:
            with httpx.Client(timeout=30) as client, connect_sse(client, "GET", self.url) as source:
                assert source.response.status_code == 200
                self.opened.set()
                for sse in source.iter_sse():
                    if sse.data:
                        self.events.append((sse.event, sse.id, sse.data))
                    if self.stop.is_set():
                        return
        except httpx.HTTPError:  # the server went away (the test is over): the stream ended too
            pass
        self.ended = True

    def numbers(self, event: str) -> list[int]:
        return [json.loads(data)["n"] for name, _, data in self.events if name == event]


def assert_contiguous(numbers: list[int]) -> None:
    assert numbers, "no events"
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers


def test_reload_adds_removes_and_changes_topics_while_unchanged_streams_go_on(serve):
    server = serve(BEFORE)
    steady = Reader(f"{server.url}/sse/steady")
    gone = Reader(f"{server.url}/sse/gone")
    mux = Reader(f"{server.url}/sse?topic=steady&topic=gone")
    for reader in (steady, gone, mux):
        reader.start()
        assert reader.opened.wait(10)
    time.sleep(0.5)
    assert status(server)["generation"] == 1

    server.config.write_text(AFTER)
    os.kill(server.proc.pid, signal.SIGHUP)
    wait_for("generation 2", lambda: status(server)["generation"] == 2)
    assert httpx.get(f"{server.url}/healthz").json()["instance"].endswith(f":{server.proc.pid}")
    time.sleep(1.0)  # the unchanged topic keeps flowing on the same connections
    steady.stop.set()
    mux.stop.set()

    # The unchanged topic: one connection throughout, every event once, in order, no gap.
    assert not steady.ended and not mux.ended
    assert_contiguous(steady.numbers("message"))
    assert_contiguous(mux.numbers("steady"))
    assert len(steady.numbers("message")) > 20
    assert not [e for e in steady.events + mux.events if e[0].endswith("gap")]
    # The removed topic: its streams were told, then its own stream ended; the mux one goes on.
    wait_for("the removed topic's stream to end", lambda: gone.ended)
    removed = [json.loads(d) for name, _, d in gone.events if name == "status"]
    assert removed and removed[-1]["state"] == "removed", gone.events[-3:]
    told = [json.loads(d) for name, _, d in mux.events if name == "gone:status"]
    assert told and told[-1]["state"] == "removed"
    assert mux.numbers("steady")[-1] > mux.numbers("steady")[0] + 10
    with server.client() as client:
        assert client.get("/sse/gone").status_code == 404
        topics = client.get("/api/topics").json()["topics"]
        assert set(topics) == {"steady", "changes", "fresh"}
        assert topics["fresh"]["published"] > 0
        # the changed topic runs its new feed: a new counter from 1, on the same topic
        assert topics["changes"]["status"]["state"] == "running"
    log = server.output()
    assert (
        "topic 'gone' removed" in log and "topic 'fresh' added" in log and "topic 'changes' restarted" in log
    )
    assert server.proc.poll() is None


def test_an_invalid_reload_keeps_the_old_config_serving(serve):
    server = serve(BEFORE)
    server.config.write_text(BEFORE + "  broken: {feed: no_such_feed}\n")
    os.kill(server.proc.pid, signal.SIGHUP)
    last = wait_for("the reload to be refused", lambda: status(server)["last_reload"])
    assert last["ok"] is False and "1 error(s) in" in last["error"]
    assert status(server)["generation"] == 1
    with server.client() as client:
        assert set(client.get("/api/topics").json()["topics"]) == {"steady", "gone", "changes"}
    log = server.output()
    assert f"{server.config}:6:" in log and "no_such_feed" in log, log[-2000:]
    assert "still serving config generation 1" in log
    # bad YAML too
    server.config.write_text("topics: [unclosed\n")
    before = status(server)["last_reload"]
    os.kill(server.proc.pid, signal.SIGHUP)
    wait_for("a second refusal", lambda: status(server)["last_reload"] != before)
    assert status(server)["last_reload"]["ok"] is False and status(server)["generation"] == 1
    assert server.proc.poll() is None


def test_sighup_never_kills_even_many_at_once_or_at_start(serve):
    server = serve(BEFORE)
    for _ in range(20):
        os.kill(server.proc.pid, signal.SIGHUP)
    wait_for("a reload", lambda: status(server)["generation"] > 1)
    time.sleep(0.5)
    assert server.proc.poll() is None
    # a SIGHUP while the server is still starting (before it serves) does not kill it either
    server.stop()
    server.proc = None
    cmd = [sys.executable, "-m", "dashboard", "serve", "--config", str(server.config), "--port", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # in the server's folder, where its file is
    proc = subprocess.Popen(
        cmd, cwd=server.home, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        time.sleep(0.8)  # the interpreter and the package are loaded: the command runs
        for _ in range(20):
            time.sleep(0.05)
            proc.send_signal(signal.SIGHUP)
        lines = iter(proc.stdout.readline, "")  # until the process ends, if it does
        assert any("serving on" in line for line in lines), "the server died of a SIGHUP at start"
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)


def test_dashboard_reload_finds_the_server_and_says_how_it_went(serve):
    server = serve(BEFORE)
    port = server.url.rsplit(":", 1)[1]
    run = [sys.executable, "-m", "dashboard", "reload", "--config", str(server.config), "--port", port]
    server.config.write_text(AFTER)
    done = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"process {server.proc.pid} serves config generation 2" in done.stdout
    # an invalid config is reported here, with file:line, and the server is not signalled
    server.config.write_text(AFTER + "  broken: {feed: no_such_feed}\n")
    done = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"{server.config}:6:" in done.stderr and "not reloading" in done.stderr
    assert status(server)["generation"] == 2 and status(server)["last_reload"]["ok"] is True
    # by its pid alone: the port it listens on (not the config's, it was started with --port)
    server.config.write_text(AFTER)
    by_pid = [sys.executable, "-m", "dashboard", "reload", "--config", str(server.config)]
    done = subprocess.run(
        [*by_pid, "--pid", str(server.proc.pid)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "serves config generation 3" in done.stdout, done.stderr
    # no server on the port: said plainly
    done = subprocess.run([*run[:-1], "1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "no process of this user listens on port 1" in done.stderr


def test_serve_watch_reloads_when_the_file_changes(serve):
    server = serve(BEFORE, args=["--watch"])
    server.config.write_text(AFTER)
    wait_for("the watcher's reload", lambda: status(server)["generation"] == 2)
    with server.client() as client:
        assert "fresh" in client.get("/api/topics").json()["topics"]


def test_what_needs_a_restart_is_named_and_the_rest_applies(serve):
    server = serve(BEFORE)
    server.config.write_text("server: {port: 1, header_timeout: 5}\nbroker: {history: 7}\n" + AFTER)
    os.kill(server.proc.pid, signal.SIGHUP)
    wait_for("the reload", lambda: status(server)["generation"] == 2)
    log = server.output()
    assert "server.port, server.header_timeout, broker changed and needs a restart" in log
    with server.client() as client:
        assert "fresh" in client.get("/api/topics").json()["topics"]


def test_auth_changes_take_effect_for_new_requests(serve):
    inbox = "  inbox: {feed: notifications}\n"
    server = serve("auth: {publish_tokens: [old-token]}\ntopics:\n" + inbox)
    note = {"title": "hello"}
    with server.client() as client:
        ok = client.post("/publish/inbox", json=note, headers={"Authorization": "Bearer old-token"})
        assert ok.status_code < 300
        server.config.write_text("auth: {publish_tokens: [new-token]}\ntopics:\n" + inbox)
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_for("the reload", lambda: status(server)["generation"] == 2)
        old = client.post("/publish/inbox", json=note, headers={"Authorization": "Bearer old-token"})
        new = client.post("/publish/inbox", json=note, headers={"Authorization": "Bearer new-token"})
        assert old.status_code == 401 and new.status_code < 300


def test_a_stopping_server_tells_streams_to_come_back_soon(serve):
    server = serve(BEFORE)
    reader = Reader(f"{server.url}/sse/steady")
    reader.start()
    assert reader.opened.wait(10)
    time.sleep(0.3)
    raw = httpx.Client(timeout=10)
    with raw.stream("GET", f"{server.url}/sse/steady?replay=0") as response:
        server.proc.send_signal(signal.SIGTERM)
        body = b"".join(response.iter_raw())
    retries = [int(line[7:]) for line in body.decode().splitlines() if line.startswith("retry: ")]
    assert retries[0] == 2000 and len(retries) == 2, body[-300:]  # the opening hint, then the short one
    assert 250 <= retries[-1] <= 1250
    server.proc.wait(15)


def test_a_reload_reaches_every_worker(redis_prefix, serve):
    broker = f"broker: {{url: {REDIS_URL}, prefix: {redis_prefix}}}\n"
    server = serve(broker + BEFORE, args=["--workers", "2"])
    wait_for("two workers", lambda: len(worker_pids(server)) == 2)
    server.config.write_text(broker + AFTER)
    pids = worker_pids(server)
    port = server.url.rsplit(":", 1)[1]
    reload = [sys.executable, "-m", "dashboard", "reload", "--config", str(server.config), "--port", port]
    done = subprocess.run(reload, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr  # it signalled the parent, which told each worker
    assert f"process {server.proc.pid} serves config generation 2" in done.stdout

    instances = set()

    def all_reloaded() -> bool:
        seen = {}
        for _ in range(20):  # each request reaches one worker or the other (it says which)
            with httpx.Client(timeout=5) as client:
                body = client.get(f"{server.url}/api/topics").json()
            seen[tuple(sorted(body["topics"]))] = True
            instances.add(body["instance"])
        return list(seen) == [("changes", "fresh", "steady")] and len(instances) == 2

    wait_for("every worker on the new config", all_reloaded)
    assert worker_pids(server) == pids  # reloaded in place, not restarted
    assert {int(instance.rsplit(":", 1)[1]) for instance in instances} == set(pids)
    with httpx.Client(timeout=10) as client, connect_sse(client, "GET", f"{server.url}/sse/fresh") as source:
        assert source.response.status_code == 200
        assert any(sse.id for sse in source.iter_sse())


def worker_pids(server) -> list[int]:
    import psutil

    return sorted(
        child.pid
        for child in psutil.Process(server.proc.pid).children()
        if "spawn" in " ".join(child.cmdline())
    )


def test_alert_rules_and_dashboards_follow_a_reload(serve):
    rules = "alerts:\n  - {name: n-high, topic: steady, field: n, above: 3, notify: inbox}\n"
    inbox = "  inbox: {feed: notifications}\n"
    server = serve(BEFORE + inbox)
    with server.client() as client:
        assert client.get("/api/alerts").json()["alerts"] == {}
        server.config.write_text(BEFORE + inbox + rules + "dashboards:\n  ops: {panels: [{topic: steady}]}\n")
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_for("the reload", lambda: status(server)["generation"] == 2)

        # the new rule follows the topic's events from now on, and fires (n passes 3 at once)
        def rule_state() -> str | None:
            return client.get("/api/alerts").json()["alerts"].get("n-high", {}).get("state")

        wait_for("the new rule to fire", lambda: rule_state() == "firing")
        assert client.get("/d/ops").status_code == 200
        server.config.write_text(BEFORE + inbox)
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_for("the second reload", lambda: status(server)["generation"] == 3)
        assert client.get("/api/alerts").json()["alerts"] == {}
        assert client.get("/d/ops").status_code == 404


def test_a_reload_switches_providers_for_new_requests(upstream, serve):
    def config(model: str) -> str:
        return f"""
        ai:
          providers:
            - {{name: up, type: openai, base_url: "{upstream.url}/v1", models: ["{model}"]}}
        topics:
          steady: {{feed: "{COUNTER}", options: {{interval: 0.05}}}}
        """

    server = serve(config("t-echo"))
    body = {"model": "t-echo", "messages": [{"role": "user", "content": "hi"}]}
    with server.client() as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        server.config.write_text(textwrap.dedent(config("t-other")))
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_for("the reload", lambda: status(server)["generation"] == 2)
        refused = client.post("/v1/chat/completions", json=body)
        assert refused.status_code in (400, 404) and "t-echo" in refused.text


def test_a_provider_that_did_not_change_keeps_its_connections_and_one_let_go_is_closed():
    import asyncio

    from dashboard.config import parse_config
    from dashboard.relay import Relay

    def ai(second: str):
        return parse_config(
            "ai:\n  providers:\n"
            "    - {name: a, type: simulated, models: [x]}\n"
            f"    - {{name: b, type: simulated, models: [{second}]}}\n"
        ).ai

    async def scenario() -> None:
        relay = Relay(ai("y"))
        a, b = relay.providers
        relay.configure(ai("z"))
        assert relay.providers[0] is a and relay.providers[1] is not b  # b changed: a new one
        assert len(relay._retiring) == 1  # the old b closes once its requests may be over
        await relay.aclose()
        assert not relay._retiring

    asyncio.run(scenario())


def test_reloads_that_change_no_topic_leave_each_feed_running_once(serve):
    server = serve(BEFORE)
    for generation in (2, 3, 4):
        os.kill(server.proc.pid, signal.SIGHUP)  # the same config: nothing to start or stop
        wait_for(f"generation {generation}", lambda g=generation: status(server)["generation"] == g)
    steady = Reader(f"{server.url}/sse/steady?replay=0")
    steady.start()
    assert steady.opened.wait(10)
    time.sleep(1.0)
    steady.stop.set()
    numbers = steady.numbers("message")
    assert len(numbers) > 5
    assert_contiguous(numbers)  # one counter: a second copy of the feed would interleave its own
    assert "Task was destroyed" not in server.output()
