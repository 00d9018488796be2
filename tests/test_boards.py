"""Several dashboards and embeddable panels, through the real server and real Chromium: boards at
/d/{name} and their navigation, panels filtered per viewer (none: 403), one panel alone at
/embed/{board}/{n} framed only by the origins in server.frame_ancestors."""

from __future__ import annotations

import re
import textwrap
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dashboard.config import parse_config
from dashboard.errors import ConfigError
from tests.support import free_port
from tests.test_access import SECRET, bearer, token

BOARDS = """
topics:
  walk: {feed: demo, title: Walk, options: {mode: walk, interval: 0.2}}
  clock: {feed: demo, title: Clock, options: {mode: clock, interval: 0.2}}
  ci.build: {feed: demo, options: {mode: clock, interval: 0.2}}
dashboards:
  ops:
    title: Operations
    panels:
      - {topic: walk, view: stat, options: {field: value}}
      - {topic: ci.build, id: builds, title: Builds, view: log}
  team:
    title: Team
    panels: [{topic: clock, view: json}]
"""


def shown_topics(html: str) -> list[str]:
    return re.findall(r'data-topic="([^"]+)"', html)


def test_two_boards_each_at_its_address_and_the_first_at_the_root(serve):
    server = serve(BOARDS)
    with server.client() as http:
        root, ops, team = http.get("/"), http.get("/d/ops"), http.get("/d/team")
        assert root.status_code == ops.status_code == team.status_code == 200
        assert shown_topics(root.text) == shown_topics(ops.text) == ["walk", "ci.build"]
        assert shown_topics(team.text) == ["clock"]
        assert "<title>Team</title>" in team.text
        # relative links, so that the app works behind a proxy under any path
        assert 'src="../static/app.js"' in team.text and 'href="../d/ops"' in team.text
        unknown = http.get("/d/nope")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_dashboard"


def test_without_dashboards_the_single_board_of_panels_keeps_working(serve):
    server = serve("topics: {a: {feed: demo}, b: {feed: demo}}\npanels: [{topic: b}]\n")
    with server.client() as http:
        page = http.get("/")
        assert shown_topics(page.text) == ["b"] and "<title>sse-dashboard</title>" in page.text
        assert shown_topics(http.get("/d/main").text) == ["b"]
        assert 'class="boards"' not in page.text  # one board: no navigation


def test_a_board_shows_only_the_panels_its_viewer_may_read_and_none_is_refused(serve):
    config = f"auth: {{viewers: {{secret: {SECRET}}}}}\n" + BOARDS
    server = serve(config)
    builds = bearer(token(["ci.*"]))
    with server.client() as http:
        ops = http.get("/d/ops", headers=builds)
        assert ops.status_code == 200 and shown_topics(ops.text) == ["ci.build"]
        assert 'href="../d/ops"' in ops.text and "../d/team" not in ops.text  # siblings it may see
        team = http.get("/d/team", headers=builds)
        assert team.status_code == 403 and shown_topics(team.text) == []
        assert http.get("/d/team").status_code == 401  # anonymous
        assert http.get("/d/team", headers=bearer(token(["clock"]))).status_code == 200
        # an embedded panel is guarded like its stream
        assert http.get("/embed/ops/1", headers=builds).status_code == 403
        assert http.get("/embed/ops/builds").status_code == 401
        assert http.get("/embed/ops/builds", headers=builds).status_code == 200


def test_unknown_and_forbidden_boards_and_panels_answer_alike_to_who_may_not_see_them(serve):
    server = serve(f"auth: {{viewers: {{secret: {SECRET}}}}}\n" + BOARDS)
    clock = bearer(token(["clock"]))
    with server.client() as http:
        for headers, status in (({}, 401), (clock, 403)):
            forbidden, unknown = http.get("/d/ops", headers=headers), http.get("/d/nosuch", headers=headers)
            assert forbidden.status_code == unknown.status_code == status, (unknown.status_code, unknown.text)
            assert forbidden.text == unknown.text
            # a panel that exists but is not readable, a panel that does not, a board that does not
            answers = [
                http.get(path, headers=headers) for path in ("/embed/ops/1", "/embed/ops/99", "/embed/x/1")
            ]
            assert [a.status_code for a in answers] == [status] * 3, [a.text for a in answers]
            assert answers[0].json() == answers[1].json() == answers[2].json()
            for answer in answers:
                assert not re.search(r"\b(walk|ci\.build|builds|ops|99)\b", answer.text), answer.text
        # to a viewer who may read every topic nothing is hidden: a name that is not there is a 404
        everything = bearer(token(["*"]))
        assert http.get("/d/nosuch", headers=everything).status_code == 404
        assert http.get("/embed/ops/99", headers=everything).status_code == 404
        assert http.get("/embed/team/1", headers=clock).status_code == 200


def test_a_board_naming_an_unknown_topic_is_a_config_error_with_its_line():
    text = textwrap.dedent(BOARDS).replace("{topic: clock, view: json}", "{topic: clocks, view: json}")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "cfg.yaml")
    assert [str(i) for i in caught.value.issues] == [
        "cfg.yaml:14: dashboards.team.panels.0.topic: no topic named 'clocks' (did you mean 'clock'?)"
    ]


def test_boards_navigate_in_the_browser_each_on_one_live_connection(serve, open_page):
    server = serve(BOARDS)
    opened = open_page(server.url)
    page = opened.page
    page.wait_for_selector('#connection[data-state="live"]')
    assert page.inner_text("h1") == "Operations"
    page.wait_for_selector('.panel[data-topic="walk"] .stat-value:not(:text-is("\u2013"))')
    page.click('nav.boards a:text-is("Team")')
    page.wait_for_url(f"{server.url}/d/team")
    page.wait_for_selector('#connection[data-state="live"]')
    page.wait_for_selector('.panel[data-topic="clock"] .json-latest:not(:empty)')
    assert page.get_attribute('nav.boards a[aria-current="page"]', "href") == "../d/team"
    page.click('nav.boards a:text-is("Operations")')
    page.wait_for_url(f"{server.url}/d/ops")
    page.wait_for_selector('.panel[data-topic="ci.build"] .log-line')
    streams = [u for u in opened.requests if "/sse?" in u]
    assert len(streams) == 3, streams  # one connection per page shown
    assert not opened.console_errors, opened.console_errors


@contextmanager
def host_page(html: str, port: int):
    """A page of another origin (a wiki, say) on a loopback port of its own."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_an_embedded_panel_is_framed_by_an_allowed_origin_and_refused_by_another(serve, open_page):
    allowed, other = free_port(), free_port()
    server = serve(f"server: {{frame_ancestors: ['http://127.0.0.1:{allowed}']}}\n" + BOARDS)
    with server.client() as http:
        alone = http.get("/embed/ops/builds")
        assert shown_topics(alone.text) == ["ci.build"]
        csp = alone.headers["content-security-policy"]
        assert csp.endswith(f"frame-ancestors http://127.0.0.1:{allowed}") and "script-src 'self';" in csp
        assert "frame-ancestors 'none'" in http.get("/d/ops").headers["content-security-policy"]
        assert http.get("/embed/ops/2").text == alone.text  # by position, from 1
        assert http.get("/embed/ops/3").status_code == 404
        assert http.get("/embed/nope/1").status_code == 404
    iframe = f'<!doctype html><iframe src="{server.url}/embed/ops/builds" width="600" height="400"></iframe>'

    with host_page(iframe, allowed) as origin:
        opened = open_page(origin)
        frame = opened.page.frame_locator("iframe")
        frame.locator('#connection[data-state="live"]').wait_for()
        frame.locator('.panel[data-topic="ci.build"] .log-line').first.wait_for()
        assert frame.locator(".panel").count() == 1
        assert frame.locator("nav.boards, h1").count() == 0  # the minimal frame
        assert not opened.console_errors, opened.console_errors

    with host_page(iframe, other) as origin:
        opened = open_page("about:blank")
        page = opened.page
        with page.expect_event("framenavigated", lambda f: f.url.startswith("chrome-error:")):
            page.goto(origin)
        assert not any(f.url.startswith(server.url) for f in page.frames), [f.url for f in page.frames]
