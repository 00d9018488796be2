"""The live dashboard page in a real browser (Debian's Chromium through Playwright)."""

from __future__ import annotations

import json
import os
import re
import signal
import textwrap
import time
from pathlib import Path

from tests.feeds_for_tests import HOSTILE_HTML, HOSTILE_SCRIPT

ROOT = Path(__file__).resolve().parent.parent
TESTS = "tests.feeds_for_tests"

SHOWCASE = f"""
server: {{retry_ms: 500}}
topics:
  walk: {{feed: demo, title: Random walk, options: {{mode: walk, interval: 0.3}}}}
  clock: {{feed: demo, title: Clock, options: {{mode: clock, interval: 1.0}}}}
  counter: {{feed: "{TESTS}:Counter", options: {{interval: 0.25}}}}
  alerts: {{feed: "{TESTS}:Notices", title: Notifications, options: {{interval: 0.4}}}}
  assistant: {{feed: "{TESTS}:ScriptedChat", title: Assistant, options: {{words: 40, delay: 0.02}}}}
panels:
  - {{topic: walk, title: "Random walk", view: chart, size: l, options: {{unit: "%", min: 0, max: 100}}}}
  - {{topic: walk, title: "Walk now", view: stat, options: {{field: value, unit: "%", warn: 70, crit: 90}}}}
  - {{topic: counter, title: "Counter", view: stat, options: {{field: value, decimals: 1}}}}
  - {{topic: alerts, view: list}}
  - {{topic: counter, title: "Event log", view: log, options: {{max: 2000}}}}
  - {{topic: assistant, view: chat, size: l}}
  - {{topic: clock, title: "Clock (latest event)", view: json}}
"""


def wait_published(server, topic: str, count: int, timeout: float = 20.0) -> None:
    """Wait until `topic` has published at least `count` events (read from /api/topics)."""
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while time.monotonic() < deadline:
            if client.get("/api/topics").json()["topics"][topic]["published"] >= count:
                return
            time.sleep(0.05)
    raise AssertionError(f"topic {topic!r} did not publish {count} events within {timeout}s")


def wait_published_more(server, topic: str, more: int) -> int:
    """Wait for `more` events beyond what `topic` has published now; returns the new total."""
    with server.client() as client:
        now = client.get("/api/topics").json()["topics"][topic]["published"]
    wait_published(server, topic, now + more)
    return now + more


def panel(page, title: str):
    return page.locator(f"section.panel:has(h2:text-is({json.dumps(title)}))")


def log_numbers(page, title: str) -> list[int]:
    """The `n` of every counter event shown in a log panel, oldest first."""
    texts = panel(page, title).locator(
        ".log-line:not([data-type]) .log-text, .log-line[data-type=message] .log-text"
    )
    return [json.loads(t)["n"] for t in texts.all_text_contents()]


def csp_errors(opened) -> list[str]:
    return [e for e in opened.console_errors if "Content Security Policy" in e or "uncaught" in e]


def test_panels_fill_from_history_then_update_live(serve, open_page):
    server = serve(SHOWCASE)
    wait_published(server, "counter", 6)
    wait_published(server, "alerts", 3)
    opened = open_page(server.url)
    page = opened.page

    # From history: the log starts at the first event, published before the page was opened.
    log = panel(page, "Event log")
    log.locator(".log-line").nth(4).wait_for()
    assert log_numbers(page, "Event log")[:5] == [1, 2, 3, 4, 5]
    notes = panel(page, "Notifications").locator(".list-item")
    assert notes.count() >= 3
    # Newest first, coloured by level, with a relative time. (Both levels read at once: an item
    # arriving between two reads would shift the list and show the same item twice.)
    levels = notes.evaluate_all("items => items.slice(0, 2).map(item => item.dataset.level)")
    assert levels[0] != levels[1], levels
    assert re.fullmatch(r"just now|\d+s ago", notes.nth(0).locator("time").text_content())
    assert page.locator("#connection").get_attribute("data-state") == "live"

    # Live: numbers keep coming with no gap, and every view shows data.
    seen = max(log_numbers(page, "Event log"))
    page.wait_for_function(
        """([n]) => [...document.querySelectorAll('.log-text')]
                      .some(t => t.textContent.includes('"n":' + n))""",
        arg=[seen + 3],
    )
    numbers = log_numbers(page, "Event log")
    assert numbers == list(range(1, len(numbers) + 1)), numbers
    assert re.fullmatch(
        r"\d+(\.\d+)?%", panel(page, "Walk now").locator(".stat-value").text_content()
    )  # unit: %
    assert panel(page, "Walk now").locator(".spark-line").get_attribute("points")
    assert panel(page, "Random walk").locator("canvas").count() == 1
    assert '"time"' in panel(page, "Clock (latest event)").locator(".json-latest").text_content()
    # Hovering the log pauses it: new events wait, counted, until the pointer leaves.
    lines = log.locator(".log-line")
    log.locator(".log-lines").hover()
    held = lines.count()
    wait_published_more(server, "counter", 3)
    page.wait_for_function(
        "() => /paused · [3-9]|paused · \\d\\d/.test(document.querySelector('.log-paused').textContent)"
    )
    assert lines.count() == held
    page.mouse.move(0, 0)
    page.wait_for_function("([n]) => document.querySelectorAll('.log-line').length >= n", arg=[held + 3])
    assert log.locator(".log-paused").is_hidden()
    numbers = log_numbers(page, "Event log")
    assert numbers == list(range(1, len(numbers) + 1)), numbers
    for title in ("Random walk", "Counter", "Event log", "Notifications"):
        assert panel(page, title).locator("[data-role=status]").text_content() == "running", title
        assert "ago" in panel(page, title).locator("[data-role=age]").text_content() or "just now" in (
            panel(page, title).locator("[data-role=age]").text_content()
        )
    assert csp_errors(opened) == []


def test_hostile_event_text_is_shown_as_text_and_nothing_runs(serve, open_page):
    server = serve(
        f"""
        topics:
          evil: {{feed: "{TESTS}:Hostile", options: {{interval: 0.3}}}}
        panels:
          - {{topic: evil, title: List, view: list}}
          - {{topic: evil, title: Log, view: log}}
          - {{topic: evil, title: JSON, view: json}}
          - {{topic: evil, title: Stat, view: stat, options: {{field: value}}}}
          - {{topic: evil, title: Chart, view: chart}}
          - {{topic: evil, title: Chat, view: chat}}
        """
    )
    wait_published(server, "evil", 5)  # some from history
    opened = open_page(server.url)
    page = opened.page
    wait_published(server, "evil", 20)  # and some live
    panel(page, "Chat").locator(".chat-error").first.wait_for()
    page.wait_for_function("() => document.querySelectorAll('.log-line').length >= 10")

    assert page.evaluate("window.__pwned") is None
    assert page.locator("img, b, .panel script").count() == 0
    assert page.locator("script").count() == len(page.locator("script[src]").all())
    assert (
        HOSTILE_HTML
        in panel(page, "List").locator(".list-item:has(.list-body) .list-head").first.text_content()
    )
    assert HOSTILE_SCRIPT in panel(page, "List").locator(".list-body").first.text_content()
    assert (
        HOSTILE_SCRIPT in panel(page, "List").locator(".list-item:not(:has(.list-body))").first.text_content()
    )
    assert HOSTILE_SCRIPT in panel(page, "Log").locator(".log-lines").text_content()
    assert HOSTILE_HTML in panel(page, "Stat").locator(".stat-value").text_content()
    assert HOSTILE_HTML in panel(page, "Chart").locator(".u-legend").text_content()
    chat = panel(page, "Chat")
    assert HOSTILE_SCRIPT in chat.locator(".chat-prompt").first.text_content()
    assert HOSTILE_HTML in chat.locator(".chat-text").first.text_content()
    # A javascript: URL is never made a link; an unknown level does not become a class.
    assert page.locator("a[href^='javascript']").count() == 0
    assert set(page.locator(".list-item").evaluate_all("els => els.map(e => e.dataset.level)")) == {"info"}
    assert csp_errors(opened) == []
    opened.screenshot("hostile.png")


def test_one_sse_connection_whatever_the_number_of_panels(serve, open_page):
    names = ["t0", "t1", "error", "open"]  # two share their names with EventSource's own events
    panels = "\n".join(
        f"  - {{topic: {names[i % 4]}, title: P{i}, view: {view}}}"
        for i, view in enumerate(
            ["json", "log", "stat", "chart", "list", "json", "log", "stat", "chart", "json"]
        )
    )
    topics = "\n".join(f"  {name}: {{feed: demo, options: {{mode: walk, interval: 0.2}}}}" for name in names)
    server = serve(f"topics:\n{topics}\npanels:\n{panels}\n")
    opened = open_page(server.url)
    page = opened.page
    page.wait_for_function("() => document.querySelectorAll('.panel[data-status=running]').length === 10")
    page.wait_for_timeout(500)  # on purpose: give any stray connection time to show up
    sse = [url for url in opened.requests if "/sse" in url]
    assert len(sse) == 1, sse
    with server.client() as client:
        topics_now = client.get("/api/topics").json()["topics"]
    assert {name: t["subscribers"] for name, t in topics_now.items()} == dict.fromkeys(names, 1)
    assert page.locator("#connection").get_attribute("data-state") == "live"


def test_reconnects_after_restart_and_misses_no_event(serve, open_page):
    server = serve(
        f"""
        server: {{retry_ms: 300}}
        topics:
          counter: {{feed: "{TESTS}:Counter", options: {{interval: 0.1}}}}
        panels:
          - {{topic: counter, title: Log, view: log, options: {{max: 5000, status: false}}}}
        """
    )
    opened = open_page(server.url)
    page = opened.page
    connection = page.locator("#connection")
    page.wait_for_function("() => document.querySelectorAll('.log-line').length >= 5")
    assert connection.get_attribute("data-state") == "live"

    server.stop()
    page.wait_for_selector("#connection[data-state=reconnecting]")
    before = log_numbers(page, "Log")
    assert before == list(range(1, len(before) + 1))
    server.start()  # same port, same file; the new process counts from 1 again, with larger ids
    page.wait_for_selector("#connection[data-state=live]")
    wait_published(server, "counter", 10)
    page.wait_for_function(
        "([n]) => document.querySelectorAll('.log-line').length >= n", arg=[len(before) + 10]
    )
    after = log_numbers(page, "Log")[len(before) :]
    # What the old process published after the page lost it was kept on disk: it comes first,
    # continuing its count; then everything the new process published from its first event on.
    missed = after[: after.index(1)] if 1 in after else after
    assert missed == list(range(len(before) + 1, len(before) + 1 + len(missed))), after
    assert after[len(missed) :] == list(range(1, len(after) - len(missed) + 1)), after
    assert log_numbers(page, "Log")[: len(before)] == before
    assert csp_errors(opened) == []


def test_a_refused_stream_shows_offline_and_is_retried_until_it_comes_back(serve, open_page):
    config = f"""
        server: {{retry_ms: 300}}
        topics:
          counter: {{feed: "{TESTS}:Counter", options: {{interval: 0.1}}}}
        panels:
          - {{topic: counter, title: Log, view: log, options: {{status: false}}}}
        """
    server = serve(config)
    opened = open_page(server.url)
    page = opened.page
    page.wait_for_function("() => document.querySelectorAll('.log-line').length >= 3")
    # The server comes back without the topic: /sse answers 404 and EventSource gives up for good.
    server.stop()
    server.config.write_text("topics:\n  other: {feed: demo}\n")
    server.start()
    page.wait_for_selector("#connection[data-state=offline]")
    before = log_numbers(page, "Log")
    # With the topic back, the page's own retry reconnects and resumes from the last id it saw.
    server.stop()
    server.config.write_text(textwrap.dedent(config))
    server.start()
    page.wait_for_selector("#connection[data-state=live]")
    page.wait_for_function(
        "([n]) => document.querySelectorAll('.log-line').length >= n", arg=[len(before) + 5]
    )
    after = log_numbers(page, "Log")[len(before) :]
    assert after == list(range(1, len(after) + 1)), after
    assert len([url for url in opened.requests if "/sse" in url]) >= 2


def test_crashing_feed_shows_restarting_with_its_error_as_text(serve, open_page):
    server = serve(
        f"""
        supervisor: {{initial_backoff: 30, max_backoff: 30}}
        topics:
          flaky: {{feed: "{TESTS}:Crashy"}}
          fine: {{feed: demo, options: {{mode: walk, interval: 0.2}}}}
        """
    )
    opened = open_page(server.url)
    page = opened.page
    flaky = page.locator("section.panel[data-topic=flaky]")
    flaky.locator("[data-role=status][data-state=restarting]").wait_for()
    assert flaky.locator("[data-role=status]").text_content() == "restarting"
    error = flaky.locator("[data-role=error]")
    error.wait_for(state="visible")  # the state may show a frame before the error text does
    assert "upstream gone <b>bold</b>" in error.text_content()
    assert "retry in" in error.text_content()
    assert page.locator("b").count() == 0
    fine = page.locator("section.panel[data-topic=fine] [data-role=status]")
    fine.and_(page.locator("[data-state=running]")).wait_for()
    assert csp_errors(opened) == []


def test_chat_view_streams_an_answer_as_text_and_stop_cancels_it(serve, open_page):
    server = serve(
        f"""
        topics:
          chat: {{feed: "{TESTS}:ScriptedChat", options: {{words: 400, delay: 0.03}}}}
        """
    )
    opened = open_page(server.url)
    page = opened.page
    box = page.locator("section.panel[data-topic=chat]")
    box.locator("textarea").fill("Say <b>many</b> words")
    box.locator("textarea").press("Enter")
    answer = box.locator(".chat-text").first
    page.wait_for_function(
        "() => (document.querySelector('.chat-text') || {}).textContent?.includes('word10 ')"
    )
    assert box.locator(".chat-prompt").first.text_content() == "Say <b>many</b> words"
    assert box.locator(".chat-answer").first.get_attribute("data-state") == "streaming"
    stop = box.locator("button[data-role=stop]")
    assert stop.is_enabled()
    stop.click()
    box.locator(".chat-answer[data-state=stopped]").wait_for()
    words = answer.text_content().split()
    assert 10 <= len(words) < 400, len(words)
    assert words == [f"word{i}" for i in range(len(words))]  # streamed in order, nothing lost
    meta = box.locator("[data-role=meta]").text_content()
    assert re.search(r"TTFT \d+ ms", meta) and re.search(r"[\d.]+ tokens/s", meta), meta
    assert "simulated" in meta.lower()
    assert "stopped" in box.locator(".chat-stats").first.text_content()
    page.wait_for_timeout(400)  # on purpose: a cancelled answer must not keep growing
    assert answer.text_content().split() == words
    assert stop.is_disabled()
    assert csp_errors(opened) == []


def test_chat_view_says_busy_on_429_and_keeps_the_prompt(serve, open_page):
    server = serve(f'topics:\n  chat: {{feed: "{TESTS}:ScriptedChat", options: {{max_queue: 0}}}}\n')
    page = open_page(server.url).page
    box = page.locator("section.panel[data-topic=chat]")
    box.locator("textarea").fill("Are you there?")
    box.locator("button[data-role=send]").click()
    box.locator("[data-role=note]", has_text="Busy").wait_for()
    assert box.locator("textarea").input_value() == "Are you there?"
    assert box.locator(".chat-exchange").count() == 0


def test_chat_panel_streams_from_the_simulated_provider_and_stop_cancels_it(serve, open_page):
    # The AI feed with its offline simulated provider (the default without keys).
    server = serve("topics:\n  ai: {feed: ai, options: {model: simulated}}\n")
    opened = open_page(server.url)
    page = opened.page
    box = page.locator("section.panel[data-topic=ai]")
    box.locator("textarea").fill("Tell me a long story about servers.")
    box.locator("button[data-role=send]").click()
    page.wait_for_function("() => (document.querySelector('.chat-text') || {}).textContent?.length > 0")
    assert "simulated" in box.text_content().lower()
    box.locator("button[data-role=stop]").click()
    box.locator(".chat-answer[data-state=stopped]").wait_for()
    length = len(box.locator(".chat-text").first.text_content())
    page.wait_for_timeout(500)  # on purpose: a cancelled answer must not keep growing
    assert len(box.locator(".chat-text").first.text_content()) == length
    assert re.search(r"TTFT \d+ ms", box.locator("[data-role=meta]").text_content())
    assert csp_errors(opened) == []


def test_no_secret_reaches_the_page_and_csp_forbids_inline_code(serve, open_page):
    secrets = {
        "DASH_PUBLISH_TOKEN": "pub-5ecret-9f1c",
        "DASH_API_TOKEN": "api-5ecret-77aa",
        "DASH_HOOK": "hook-5ecret-e2",
    }
    server = serve(
        f"""
        auth:
          publish_tokens: ["${{DASH_PUBLISH_TOKEN}}"]
          api_tokens: ["${{DASH_API_TOKEN}}"]
        topics:
          hook: {{feed: "{TESTS}:Secretive", options: {{secret: "${{DASH_HOOK}}", interval: 0.2}}}}
        """,
        env=secrets,
    )
    with server.client() as client:
        response = client.get("/")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    opened = open_page(server.url)
    opened.page.locator("section.panel[data-status=running]").wait_for()
    for text in (response.text, opened.page.content()):
        for value in secrets.values():
            assert value not in text


def test_themes_keyboard_and_phone(serve, open_page):
    server = serve(SHOWCASE)
    wait_published(server, "alerts", 4)
    for scheme in ("light", "dark"):
        opened = open_page(server.url, color_scheme=scheme)
        page = opened.page
        page.locator(".chart-box canvas").wait_for()
        if scheme == "light":
            # One answer in the chat panel, so the picture shows every view.
            page.locator("section.view-chat textarea").fill("How busy is the build farm?")
            page.locator("section.view-chat button[data-role=send]").click()
            page.locator(".chat-answer[data-state=done]").wait_for()
        wait_published_more(server, "walk", 5)  # the chart gathers a few points for the picture
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        channels = [int(c) for c in re.findall(r"\d+", background)[:3]]
        assert (sum(channels) / 3 > 128) == (scheme == "light"), background
        path = opened.screenshot(f"dashboard-{scheme}.png")
        assert csp_errors(opened) == []

    # Keyboard: Tab reaches the prompt box and the Send button, with a visible focus ring.
    page.locator("body").focus()
    reached = []
    for _ in range(60):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.dataset.role || document.activeElement.tagName"))
        if reached[-1] == "send":
            break
    assert "TEXTAREA" in reached and reached[-1] == "send", reached
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"

    # A phone: one column, nothing wider than the screen.
    phone = open_page(server.url, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    phone.page.locator(".chart-box canvas").wait_for()
    assert phone.page.evaluate("document.documentElement.scrollWidth") <= 390
    lefts = phone.page.locator("section.panel").evaluate_all(
        "els => els.map(e => e.getBoundingClientRect().left)"
    )
    assert len(set(round(x) for x in lefts)) == 1, lefts
    phone.screenshot("dashboard-phone.png")
    assert path.exists()


def test_a_panel_says_when_events_were_lost_while_it_was_away(redis_prefix, serve, open_page):
    config = f"""
        server: {{retry_ms: 300}}
        broker: {{url: "redis://127.0.0.1:6379/0", prefix: "{redis_prefix}"}}
        topics:
          counter: {{feed: "{TESTS}:Counter", options: {{interval: 0.05}}, history: 5}}
        panels:
          - {{topic: counter, title: Log, view: log, options: {{status: false}}}}
        """
    server = serve(config)
    opened = open_page(server.url)
    page = opened.page
    page.wait_for_function("() => document.querySelectorAll('.log-line').length >= 3")
    notice = page.locator("#panel-1 [data-role=notice]")
    assert notice.is_hidden(), "nothing was lost yet"
    server.stop()
    page.wait_for_selector("#connection[data-state=reconnecting]")
    # Another instance keeps the topic going while the page is away: more than its history of 5.
    other = serve(config)
    wait_published(other, "counter", 20)
    other.stop()
    server.start()
    page.wait_for_selector("#panel-1[data-gap=expired]")
    assert "Events were lost" in notice.inner_text(), notice.inner_text()
    assert notice.is_visible()
    page.wait_for_selector("#connection[data-state=live]")
    assert csp_errors(opened) == []


def test_a_reload_removes_the_panels_of_a_removed_topic_and_the_rest_stays_live(serve, open_page):
    counter = f'{{feed: "{TESTS}:Counter", options: {{interval: 0.1}}}}'

    def config(second: str) -> str:
        return textwrap.dedent(
            f"""
            topics:
              kept: {counter}
              {second}: {counter}
            panels:
              - {{topic: kept, title: Kept, view: log, options: {{max: 5000, status: false}}}}
              - {{topic: {second}, title: {second}, view: log}}
            """
        )

    server = serve(config("dropped"))
    opened = open_page(server.url)
    page = opened.page
    page.wait_for_function("() => document.querySelectorAll('.panel[data-status=running]').length === 2")
    server.config.write_text(config("other"))
    os.kill(server.proc.pid, signal.SIGHUP)
    page.wait_for_function("() => document.querySelectorAll('.panel').length === 1")
    shown = len(log_numbers(page, "Kept"))
    page.wait_for_function("([n]) => document.querySelectorAll('.log-line').length >= n + 5", arg=[shown])
    numbers = log_numbers(page, "Kept")
    assert numbers == list(range(1, len(numbers) + 1))  # the same stream: nothing lost or repeated
    assert page.locator("#connection").get_attribute("data-state") == "live"
    assert len([url for url in opened.requests if "/sse" in url]) == 1  # no reconnect
    assert csp_errors(opened) == []


GLANCE = """
topics:
  host: {feed: "tests.feeds_for_tests:Gauges"}
  words: {feed: "tests.feeds_for_tests:Words"}
  ticker: {feed: "tests.feeds_for_tests:Counter", options: {interval: 0.1}}
panels:
  - topic: host
    title: Traffic
    view: chart
    options:
      fields:
        rate: {label: Received, unit: B/s}
        cpu: {label: CPU, unit: "%", thresholds: {warn: 70, crit: 90}}
  - {topic: host, title: Rate, view: stat, options: {fields: {rate: {label: Received, unit: B/s}}}}
  - topic: host
    title: Load
    view: stat
    options: {fields: {cpu: {unit: "%", thresholds: {warn: 70, crit: 90}}}}
  - {topic: words, title: Nothing, view: chart}
  - {topic: words, title: Nothing either, view: stat}
  - {topic: ticker, title: Count chart, view: chart}
  - {topic: ticker, title: Count stat, view: stat}
"""


def test_fields_read_at_a_glance_labels_units_thresholds_and_an_empty_state_that_says_why(serve, open_page):
    server = serve(GLANCE)
    opened = open_page(server.url)
    page = opened.page
    traffic = panel(page, "Traffic")
    traffic.locator(".u-legend").wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.u-legend .u-value')].some(e => e.textContent === '2.27 kB/s')"
    )
    legend = traffic.locator(".u-legend").text_content()
    assert "Received" in legend and "CPU" in legend and "95%" in legend and "ts" not in legend.split()
    assert traffic.locator(".chart-thresholds").text_content() == "CPU warn 70% · CPU crit 90%"
    assert panel(page, "Rate").locator(".stat-value").text_content() == "2.27 kB/s"
    assert panel(page, "Rate").locator(".stat-label").text_content() == "Received"
    load = panel(page, "Load")
    page.wait_for_function("() => [...document.querySelectorAll('.stat-level')].some(e => e.textContent)")
    assert load.get_attribute("data-level") == "crit"
    assert load.locator(".stat-level").text_content() == "critical"  # not by colour alone
    assert load.locator(".stat-value").text_content() == "95%"
    said = (
        "No numeric field to show in the events (fields seen: status, host): "
        "pick one with the panel's options.fields."
    )
    assert panel(page, "Nothing").locator(".chart-note").text_content() == said
    assert panel(page, "Nothing either").locator(".stat-label").text_content() == said
    assert "status" not in panel(page, "Nothing either").locator(".stat-value").text_content()
    # the documentation's example feed sends {"n": ...}: both panels show it
    page.wait_for_function(
        "() => [...document.querySelectorAll('.u-legend th')].some(e => e.textContent === 'n')"
    )
    assert panel(page, "Count stat").locator(".stat-label").text_content() == "n"
    assert panel(page, "Count stat").locator(".stat-value").text_content().isdigit()
    opened.screenshot("fields-at-a-glance.png")
    assert csp_errors(opened) == []


def test_the_table_view_shows_rows_per_key_and_per_model_as_text(serve, open_page):
    server = serve(
        f"""
        topics:
          spend: {{feed: "{TESTS}:Ledger"}}
          hostile: {{feed: "{TESTS}:Hostile", options: {{interval: 0.2}}}}
        panels:
          - {{topic: spend, title: Spend, view: table}}
          - topic: spend
            title: Keys
            view: table
            options: {{rows: keys, columns: {{cost_usd: {{label: Cost}}}}}}
          - {{topic: hostile, title: Hostile, view: table}}
        """
    )
    opened = open_page(server.url)
    page = opened.page
    spend = panel(page, "Spend")
    spend.locator("table caption:text-is('models')").wait_for()
    rows = spend.locator("table").evaluate_all(
        "tables => tables.map(t => [...t.rows].map(r => [...r.cells].map(c => c.textContent)))"
    )
    assert rows[0] == [["day", "cost_usd"], ["2026-12-04", "$0.0042"]]  # totals: one row, no name
    assert rows[1] == [
        ["name", "requests", "cost_usd"],
        ["team-a", "3", "$0.0040"],
        ["team-b", "1", "$0.00020"],
    ]
    assert rows[2] == [["name", "requests", "completion_tokens"], ["gpt-x", "4", "1,200"]]
    keys = panel(page, "Keys").locator("table")
    assert keys.evaluate("t => [...t.rows].map(r => [...r.cells].map(c => c.textContent))") == [
        ["name", "Cost"],
        ["team-a", "$0.0040"],
        ["team-b", "$0.00020"],
    ]
    page.wait_for_timeout(600)  # hostile text arrives: shown as text, nothing runs
    assert page.evaluate("() => window.__pwned") is None
    assert csp_errors(opened) == []


def test_the_viewers_tools_theme_remembered_time_window_pause_and_full_screen(serve, open_page):
    server = serve(
        f"""
        topics:
          ticker: {{feed: "{TESTS}:Counter", options: {{interval: 0.1}}}}
        panels:
          - {{topic: ticker, title: Count, view: chart, options: {{fields: [n]}}}}
        """
    )
    opened = open_page(server.url, color_scheme="light")
    page = opened.page
    count = panel(page, "Count")
    count.locator(".u-legend").wait_for()
    background = "() => getComputedStyle(document.body).backgroundColor"
    light = page.evaluate(background)
    theme = page.locator("#theme")
    assert theme.text_content() == "theme: auto"
    theme.click()
    assert theme.text_content() == "theme: light"
    theme.click()
    assert theme.text_content() == "theme: dark"
    dark = page.evaluate(background)
    assert dark != light
    page.reload()  # remembered in this browser
    page.locator("#theme:text-is('theme: dark')").wait_for()
    assert page.evaluate(background) == dark

    count = panel(page, "Count")
    count.locator(".u-legend").wait_for()
    shown = "() => document.querySelector('.u-legend .u-series:nth-child(2) .u-value').textContent"
    page.wait_for_function(f"() => Number(({shown})()) > 3")
    pause = count.locator("button:text-is('pause')")
    pause.click()
    held = page.evaluate(shown)
    wait_published_more(server, "ticker", 5)
    page.wait_for_timeout(300)
    assert page.evaluate(shown) == held  # paused: the chart holds still
    count.locator("button:text-is('resume')").click()
    page.wait_for_function(f"([held]) => Number(({shown})()) > Number(held)", arg=[held])
    count.locator("select").select_option(label="1 min")
    assert count.locator("select").input_value() == "60"

    count.locator('[data-role="fullscreen"]').click()
    page.wait_for_function("() => document.fullscreenElement?.dataset.topic === 'ticker'")
    page.keyboard.press("Escape")
    assert csp_errors(opened) == []
