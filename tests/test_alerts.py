"""Alert rules through the real server: ok -> pending -> firing -> ok, one notification on the
notify topic per firing and resolving, Standard Webhooks deliveries to loopback receivers (checked
with the reference library), retried with backoff, a hanging receiver slowing nothing else, one
evaluator across Redis-backed instances, and /api/alerts guarded per viewer."""

from __future__ import annotations

import json
import textwrap
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook

from dashboard.config import parse_config
from dashboard.errors import ConfigError
from tests.support import REDIS_URL, free_port, sse_stream
from tests.test_access import SECRET, bearer, token
from tests.test_dashboard_page import wait_published_more

HOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PUSH = "push-token-for-alert-tests"
AUTH = {"Authorization": f"Bearer {PUSH}"}


@dataclass
class Receiver:
    """A webhook receiver on loopback: answers `statuses` in turn (then 200), or never answers."""

    statuses: list[int] = field(default_factory=list)
    hang: bool = False
    deliveries: list[dict] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)
    url: str = ""

    def wait_for(self, count: int, timeout: float = 30.0) -> list[dict]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.deliveries) >= count, timeout), (
                f"wanted {count} deliveries within {timeout}s, got {self.deliveries}"
            )
            return list(self.deliveries)

    def assert_no_more(self, count: int, quiet: float = 1.5) -> None:
        """After the `count` expected deliveries, none more within `quiet` seconds: a late repeat
        (a retry after success, a second instance delivering too) would come within a retry's backoff."""
        time.sleep(quiet)  # on purpose: let a late duplicate arrive
        with self.arrived:
            extra = [d["body"][:100] for d in self.deliveries[count:]]
            assert not extra, f"{len(extra)} more than the {count} expected: {extra}"


@contextmanager
def receiving(receiver: Receiver):
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with receiver.arrived:
                delivery = {"headers": dict(self.headers), "body": body, "at": time.monotonic()}
                receiver.deliveries.append(delivery)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.arrived.notify_all()
            if receiver.hang:
                release.wait(60)
                return
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    httpd.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{httpd.server_address[1]}/hooks/s3cret-path"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield receiver
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()


def config(*receivers: Receiver, wait: float = 1.0, attempts: int = 5, timeout: float = 10.0) -> str:
    hooks = ", ".join(
        f'{{url: "{r.url}", secret: "{HOOK_SECRET}", attempts: {attempts}, timeout: {timeout}}}'
        for r in receivers
    )
    return f"""
auth: {{publish_tokens: [{PUSH}]}}
topics:
  load: {{feed: "tests.sample_feeds:PlainInbox"}}
  inbox: {{feed: notifications}}
  clock: {{feed: "tests.feeds_for_tests:Counter", options: {{interval: 0.1}}}}
alerts:
  - name: load-high
    topic: load
    field: got.cpu.percent
    above: 90
    for: {wait}
    notify: inbox
    webhooks: [{hooks}]
"""


def push(http, percent: float) -> None:
    answer = http.post("/publish/load", json={"cpu": {"percent": percent}}, headers=AUTH)
    assert answer.status_code == 202, answer.text


def next_notice(events, wanted: str) -> tuple[str, dict]:
    """The next event on the inbox stream of type `wanted` (`inbox` or `inbox:alert`)."""
    for sse in events:
        if sse.event == wanted:
            return sse.event, json.loads(sse.data)
    raise AssertionError("the stream ended")


def verified(delivery: dict) -> dict:
    """The delivery's JSON, once the Standard Webhooks reference library accepts its signature."""
    return Webhook(HOOK_SECRET).verify(delivery["body"], delivery["headers"])


def test_a_rule_fires_after_for_resolves_and_retries_a_failing_receiver(serve):
    with receiving(Receiver(statuses=[500, 503])) as flaky:
        server = serve(config(flaky, wait=1.0))
        with server.client() as http, sse_stream(http, "/sse?topic=inbox&replay=0") as events:
            push(http, 50)  # below: stays ok
            started = time.monotonic()
            push(http, 95)
            _, pending = next_notice(events, "inbox:alert")
            assert (pending["state"], pending["value"]) == ("pending", 95)
            _, firing = next_notice(events, "inbox:alert")
            assert firing["state"] == "firing" and time.monotonic() - started >= 1.0
            _, notice = next_notice(events, "inbox")
            assert notice["title"] == "load-high firing: got.cpu.percent = 95" and notice["level"] == "error"
            assert (notice["rule"], notice["state"], notice["value"]) == ("load-high", "firing", 95)

            tries = flaky.wait_for(3)
            assert [d["headers"]["webhook-id"] for d in tries] == [tries[0]["headers"]["webhook-id"]] * 3
            body = verified(tries[2])
            assert body["type"] == "alert.firing" and body["data"]["value"] == 95
            assert tries[1]["at"] - tries[0]["at"] >= 0.5  # backed off (1 s, jittered to half)

            push(http, 10)
            _, resolved = next_notice(events, "inbox:alert")
            assert resolved["state"] == "ok"
            _, notice = next_notice(events, "inbox")
            assert notice["state"] == "resolved" and notice["level"] == "success"
            assert verified(flaky.wait_for(4)[3])["type"] == "alert.resolved"

            deadline = time.monotonic() + 10  # the attempt is recorded once its answer is read
            while time.monotonic() < deadline:
                rule = http.get("/api/alerts").json()["alerts"]["load-high"]
                if len(rule["attempts"]) == 4:
                    break
                time.sleep(0.05)
            assert (rule["state"], rule["value"], rule["leader"]) == ("ok", 10, True)
            attempts = [(a["event"], a["attempt"], a["status"], a["ok"]) for a in rule["attempts"]]
            assert attempts == [
                ("firing", 1, 500, False),
                ("firing", 2, 503, False),
                ("firing", 3, 200, True),
                ("resolved", 1, 200, True),
            ]
            assert rule["last_delivery"]["event"] == "resolved"
            assert rule["attempts"][0]["origin"] == flaky.url.rsplit("/hooks", 1)[0]
            shown = json.dumps(rule) + http.get("/").text + server.output()
            assert HOOK_SECRET not in shown and "s3cret-path" not in shown
        flaky.assert_no_more(4)  # one notification each, no repeat after success


def test_a_hanging_receiver_slows_neither_the_rule_nor_other_receivers_nor_feeds(serve):
    with receiving(Receiver(hang=True)) as hanging, receiving(Receiver()) as fine:
        server = serve(config(hanging, fine, wait=0, attempts=2, timeout=1.5))
        with server.client() as http:
            push(http, 99)
            fine.wait_for(1, timeout=5)  # while the other hangs
            hanging.wait_for(1)
            push(http, 1)
            assert verified(fine.wait_for(2, timeout=5)[1])["type"] == "alert.resolved"
            assert http.get("/api/alerts").json()["alerts"]["load-high"]["state"] == "ok"
            wait_published_more(server, "clock", 5)  # feeds go on meanwhile
            hanging.wait_for(3)  # the firing's second try, the resolving's first
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                attempts = http.get("/api/alerts").json()["alerts"]["load-high"]["attempts"]
                timeouts = [a for a in attempts if a["error"] == "timeout after 1.5s"]
                if len(timeouts) >= 2:
                    break
                time.sleep(0.1)
            assert len(timeouts) >= 2 and all(a["webhook"] == 0 for a in timeouts), attempts


def test_one_instance_evaluates_each_rule_across_redis(redis_prefix, serve):
    with receiving(Receiver()) as hook:
        shared = config(hook, wait=0) + f"broker: {{url: '{REDIS_URL}', prefix: {redis_prefix}}}\n"
        first, second = serve(shared), serve(shared)
        with first.client() as a, second.client() as b:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                leaders = [c.get("/api/alerts").json()["alerts"]["load-high"]["leader"] for c in (a, b)]
                if True in leaders:
                    break
                time.sleep(0.05)
            assert sorted(leaders) == [False, True]
            push(a, 99)
            push(b, 5)
            kinds = [verified(d)["type"] for d in hook.wait_for(2)]
            assert kinds == ["alert.firing", "alert.resolved"]
            with sse_stream(b, "/sse?topic=inbox") as events:
                titles = [next_notice(events, "inbox")[1]["state"] for _ in range(2)]
            assert titles == ["firing", "resolved"]
            for client in (a, b):  # every instance follows the state
                assert client.get("/api/alerts").json()["alerts"]["load-high"]["state"] == "ok"
        hook.assert_no_more(2)  # delivered by the one instance evaluating the rule


def test_api_alerts_lists_only_rules_on_topics_the_viewer_may_read(serve):
    server = serve(
        f"""
auth: {{viewers: {{secret: {SECRET}}}}}
topics:
  cpu: {{feed: demo, options: {{mode: walk, interval: 0.2}}}}
  lobby: {{feed: demo, public: true, options: {{mode: walk, interval: 0.2}}}}
  inbox: {{feed: notifications, public: true}}
alerts:
  - {{name: cpu-high, topic: cpu, field: value, above: 90, notify: inbox}}
  - {{name: lobby-low, topic: lobby, field: value, below: 5, notify: inbox}}
"""
    )
    with server.client() as http:
        assert list(http.get("/api/alerts").json()["alerts"]) == ["lobby-low"]
        assert list(http.get("/api/alerts", headers=bearer(token(["cpu"]))).json()["alerts"]) == [
            "cpu-high",
            "lobby-low",
        ]
        assert http.get("/api/alerts", headers=bearer("forged")).status_code == 401


def test_rule_mistakes_are_config_errors_with_their_line():
    text = """\
        topics:
          cpu: {feed: demo}
          inbox: {feed: notifications}
        alerts:
          - {name: both, topic: cpu, field: value, above: 1, below: 2, notify: inbox}
          - {name: nowhere, topic: gpu, field: value, above: 1, notify: inbox}
          - {name: loud, topic: cpu, field: value, above: 1, notify: cpu}
          - {name: hook, topic: cpu, field: value, above: 1, notify: inbox,
             webhooks: [{url: "ftp://x", secret: ""}]}
        """
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text), "cfg.yaml")
    issues = [str(i) for i in caught.value.issues]
    assert issues == [
        "cfg.yaml:5: alerts.0: alert 'both': give exactly one of above or below",
        "cfg.yaml:6: alerts.1.topic: no topic named 'gpu' (did you mean 'cpu'?)",
        "cfg.yaml:7: alerts.2.notify: topic 'cpu' does not carry notifications (use a topic of the "
        "notifications feed)",
        "cfg.yaml:9: alerts.3.webhooks.0.url: must be an http:// or https:// URL",
        "cfg.yaml:9: alerts.3.webhooks.0.secret: a webhook secret must not be empty "
        "(whsec_ followed by base64)",
    ], issues


def test_the_alerts_view_lists_rule_states_live(serve, open_page):
    with receiving(Receiver()) as hook:
        server = serve(config(hook, wait=0) + "panels: [{topic: inbox, view: alerts}, {topic: inbox}]\n")
        opened = open_page(server.url)
        page = opened.page
        rule = '.alert-rule[data-rule="load-high"]'
        page.wait_for_selector(f'{rule}[data-state="ok"]')
        page.wait_for_selector('#connection[data-state="live"]')
        with server.client() as http:
            push(http, 97.5)
            page.wait_for_selector(f'{rule}[data-state="firing"]')
            assert "got.cpu.percent 97.5 (> 90)" in page.inner_text(rule)
            page.wait_for_selector('.list-item:has-text("load-high firing")')  # the notification
            push(http, 3)
            page.wait_for_selector(f'{rule}[data-state="ok"]')
        assert page.locator(".alert-rule").count() == 1
        assert not opened.console_errors, opened.console_errors
