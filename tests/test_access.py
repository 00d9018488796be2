"""Who may see and do what, through the real server: viewer tokens and proxy users per topic, the
cookie sign-in, the relay's refusals of other sites, the Host check, CORS, and what `serve` refuses
to open on a network address."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from httpx_sse import connect_sse

from tests.support import ROOT, free_port, read_events, real_events

SECRET = "viewer-secret-0123456789abcdef0123456789"
TOPICS = """
topics:
  lobby: {feed: demo, public: true, options: {mode: clock, interval: 0.2}}
  cpu: {feed: demo, options: {mode: walk, interval: 0.2}}
  ci.build: {feed: demo, options: {mode: clock, interval: 0.2}}
  ci.test: {feed: demo, options: {mode: clock, interval: 0.2}}
"""
VIEWERS = f"""
auth:
  viewers:
    secret: {SECRET}
{TOPICS}"""


def token(topics, *, key=SECRET, algorithm="HS256", ttl=600, **claims) -> str:
    body = {"topics": topics, **claims}
    if ttl is not None:
        body["exp"] = int(time.time()) + ttl
    return jwt.encode(body, key, algorithm=algorithm)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def opened(http: httpx.Client, path: str, **kwargs) -> httpx.Response:
    """The answer to GET `path`, read whole unless it is a stream (which is closed at once)."""
    with http.stream("GET", path, **kwargs) as response:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return response
        response.read()
        return response


def listed(http: httpx.Client, **kwargs) -> list[str]:
    response = http.get("/api/topics", **kwargs)
    assert response.status_code == 200, response.text
    return sorted(response.json()["topics"])


@pytest.fixture
def server(serve):
    return serve(VIEWERS)


def test_without_viewers_every_topic_stays_readable_by_anyone(serve):
    server = serve(TOPICS)
    with server.client() as http:
        assert listed(http) == ["ci.build", "ci.test", "cpu", "lobby"]
        assert read_events(http, "/sse/cpu", 1)


def test_a_private_topic_needs_a_token_that_names_it(server):
    with server.client() as http:
        missing = opened(http, "/sse/cpu")
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
        assert missing.headers["www-authenticate"] == "Bearer"
        # the same token three ways: header, query, and (below) the cookie
        good = token(["cpu", "ci.*"])
        assert read_events(http, "/sse/cpu", 1, headers=bearer(good))
        assert read_events(http, f"/sse/ci.build?token={good}", 1)
        assert read_events(http, "/sse/lobby", 1, headers=bearer(token(["ci.*"])))  # public: anyone
        wrong = opened(http, "/sse/cpu", headers=bearer(token(["ci.*"])))
        assert wrong.status_code == 403 and "'cpu'" in wrong.json()["error"]["message"]
        assert read_events(http, "/sse/lobby", 1)  # public topics need nothing


@pytest.mark.parametrize(
    "bad, why",
    [
        (token(["*"], ttl=-60), "expired"),
        (token(["*"], key="another-secret-0123456789abcdef0123"), "signature"),
        (token(["*"], ttl=None), "exp"),
        (jwt.encode({"topics": ["*"], "exp": int(time.time()) + 600}, None, algorithm="none"), "alg"),
        ("not.a.token", "invalid"),
        (token("cpu"), "list"),  # topics must be a list of patterns
    ],
    ids=["expired", "wrong-key", "no-exp", "alg-none", "malformed", "topics-not-a-list"],
)
def test_bad_tokens_are_401_even_for_a_public_topic(server, bad, why):
    with server.client() as http:
        for path in ("/sse/cpu", "/sse/lobby", "/api/topics"):
            response = http.get(path, headers=bearer(bad))
            assert response.status_code == 401, (path, response.text)
            assert why in response.json()["error"]["message"].lower() or why == "invalid"


def test_a_multiplexed_stream_with_one_forbidden_topic_is_403_naming_it(server):
    with server.client() as http:
        viewer = bearer(token(["ci.*"]))
        response = opened(http, "/sse?topic=ci.build&topic=cpu&topic=lobby", headers=viewer)
        assert response.status_code == 403
        assert "'cpu'" in response.json()["error"]["message"]
        anonymous = opened(http, "/sse?topic=lobby&topic=cpu")
        assert anonymous.status_code == 401
        events = read_events(http, "/sse?topic=ci.build&topic=ci.test&topic=lobby", 6, headers=viewer)
        assert {e.event for e in events} == {"ci.build", "ci.test", "lobby"}


def test_lists_health_and_metrics_name_only_what_the_caller_may_read(server):
    with server.client() as http:
        assert listed(http) == ["lobby"]
        assert listed(http, headers=bearer(token(["ci.*"]))) == ["ci.build", "ci.test", "lobby"]
        assert listed(http, headers=bearer(token(["*"]))) == ["ci.build", "ci.test", "cpu", "lobby"]
        health = http.get("/healthz").json()
        assert sorted(health["feeds"]) == ["lobby"] and health["leading"] == ["lobby"]
        opened(http, "/sse/cpu")  # a request on a private topic: its route must not show either
        anonymous = http.get("/metrics").text
        assert 'topic="lobby"' in anonymous
        assert '"cpu"' not in anonymous and "ci.build" not in anonymous
        viewer = http.get("/metrics", headers=bearer(token(["cpu"]))).text
        assert 'topic="cpu"' in viewer and "ci.build" not in viewer


def test_signing_in_with_a_link_sets_a_strict_cookie_and_drops_the_token_from_the_url(server):
    viewer = token(["cpu"], sub="alice")
    with server.client() as http:
        page = http.get(f"/?token={viewer}&theme=dark")
        assert page.status_code == 303
        assert page.headers["location"] == "/?theme=dark"
        cookie = page.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        assert viewer not in page.headers["location"]
        shown = http.get("/")  # with the cookie now
        assert shown.status_code == 200
        assert re.findall(r'data-topic="([^"]+)"', shown.text) == ["lobby", "cpu"]
        assert "alice" in shown.text
        assert read_events(http, "/sse/cpu", 1)  # the cookie opens the stream too
        assert opened(http, "/sse/ci.build").status_code == 403
        assert http.get("/?token=forged").status_code == 401
    with server.client() as stranger:
        page = stranger.get("/")
        assert re.findall(r'data-topic="([^"]+)"', page.text) == ["lobby"]
        stranger.cookies.set("dashboard_viewer", token(["*"], ttl=-60))
        expired = stranger.get("/")
        assert expired.status_code == 401 and "expired" in expired.text
        assert 'dashboard_viewer=""' in expired.headers["set-cookie"]  # forgotten


def test_a_private_dashboard_asks_anonymous_visitors_for_their_link(serve):
    server = serve(f"auth: {{viewers: {{secret: {SECRET}}}}}\ntopics: {{cpu: {{feed: demo}}}}\n")
    with server.client() as http:
        page = http.get("/")
        assert page.status_code == 401 and "/?token=" in page.text
        assert "cpu" not in re.sub(r"<script.*?</script>", "", page.text)


@pytest.mark.parametrize("trusted, honoured", [("127.0.0.1/32", True), ("10.0.0.0/8", False)])
def test_the_proxy_header_counts_only_from_a_trusted_proxy(serve, trusted, honoured):
    proxied = f"""\
auth:
  viewers:
    proxy_header: X-Forwarded-User
    trusted_proxies: [{trusted}]
    users: {{alice: ["*"], bob: ["ci.*"]}}
"""
    server = serve(proxied + TOPICS)
    with server.client() as http:
        alice = opened(http, "/sse/cpu", headers={"X-Forwarded-User": "alice"})
        bob = http.get("/api/topics", headers={"X-Forwarded-User": "bob"})
        if honoured:
            assert read_events(http, "/sse/cpu", 1, headers={"X-Forwarded-User": "alice"})
            assert sorted(bob.json()["topics"]) == ["ci.build", "ci.test", "lobby"]
            assert opened(http, "/sse/cpu", headers={"X-Forwarded-User": "bob"}).status_code == 403
            assert opened(http, "/sse/cpu", headers={"X-Forwarded-User": "mallory"}).status_code == 403
        else:
            assert alice.status_code == 401
            assert sorted(bob.json()["topics"]) == ["lobby"]
            # claiming to be forwarded by a trusted proxy changes nothing: the peer is who connected
            spoofed = {
                "X-Forwarded-User": "alice",
                "X-Forwarded-For": "10.1.2.3",
                "Forwarded": "for=10.1.2.3",
            }
            assert opened(http, "/sse/cpu", headers=spoofed).status_code == 401


@pytest.mark.parametrize("trusted, secure", [("127.0.0.1/32", True), ("10.0.0.0/8", False)])
def test_cookies_are_secure_when_a_trusted_proxy_says_the_request_came_over_tls(serve, trusted, secure):
    config = f"""\
auth:
  api_tokens: [api-token-0123456789abcdef]
  viewers:
    secret: {SECRET}
    trusted_proxies: [{trusted}]
{TOPICS}"""
    server = serve(config)
    viewer = token(["cpu"])
    tls = {"X-Forwarded-Proto": "https"}

    def cookies(path: str, headers: dict[str, str]) -> list[str]:
        with server.client() as http:  # a fresh browser each time: no session cookie yet
            answer = http.get(path, headers=headers)
            assert answer.status_code in (200, 303), answer.text
            return [c.lower() for c in answer.headers.get_list("set-cookie")]

    signed_in, page = cookies(f"/?token={viewer}", tls), cookies("/", tls)
    assert [c.split("=")[0] for c in signed_in + page] == ["dashboard_viewer", "dashboard_session"]
    for cookie in signed_in + page:
        assert ("; secure" in cookie) is secure, cookie
    # without the header the request came over plain HTTP, whoever sent it
    for cookie in cookies(f"/?token={viewer}", {}) + cookies("/", {"X-Forwarded-Proto": "http"}):
        assert "; secure" not in cookie, cookie


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
def test_tokens_signed_with_a_private_key_are_checked_with_the_public_key(serve, tmp_path, kind):
    private = (
        rsa.generate_private_key(65537, 2048) if kind == "RS256" else ec.generate_private_key(ec.SECP256R1())
    )
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    indented = "\n".join("      " + line for line in pem.strip().splitlines())
    server = serve(f"auth:\n  viewers:\n    public_key: |\n{indented}\n{TOPICS}")
    with server.client() as http:
        assert read_events(http, "/sse/cpu", 1, headers=bearer(token(["cpu"], key=private, algorithm=kind)))
        # the public key used as an HMAC secret: the classic algorithm confusion is refused
        head, body = (
            base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=")
            for part in ({"alg": "HS256", "typ": "JWT"}, {"topics": ["*"], "exp": int(time.time()) + 600})
        )
        mac = hmac.new(pem.encode(), head + b"." + body, hashlib.sha256).digest()
        confused = b".".join((head, body, base64.urlsafe_b64encode(mac).rstrip(b"="))).decode()
        assert opened(http, "/sse/cpu", headers=bearer(confused)).status_code == 401


def test_dashboard_token_prints_a_token_for_the_configured_secret(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(VIEWERS)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "dashboard",
            "token",
            "--config",
            str(config),
            "--topics",
            "cpu,ci.*",
            "--ttl",
            "8h",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    claims = jwt.decode(out, SECRET, algorithms=["HS256"])
    assert claims["topics"] == ["cpu", "ci.*"]
    assert 8 * 3600 - 60 < claims["exp"] - time.time() <= 8 * 3600
    config.write_text(TOPICS)
    refused = subprocess.run(
        [sys.executable, "-m", "dashboard", "token", "--config", str(config), "--topics", "cpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "auth.viewers.secret" in refused.stderr


def test_the_relay_refuses_other_sites_and_bodies_that_are_not_json(serve):
    server = serve("topics: {clock: {feed: demo}}\n")
    body = b'{"model": "simulated", "messages": [{"role": "user", "content": "hi"}]}'
    with server.client(timeout=30) as http:
        # A "simple" cross-site request (no preflight) must neither spend nor read.
        evil = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
        response = http.post("/v1/chat/completions", content=body, headers=evil)
        assert response.status_code == 403 and response.json()["error"]["code"] == "cross_origin"
        fetch = {"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"}
        assert http.post("/v1/chat/completions", content=body, headers=fetch).status_code == 403
        assert http.get("/v1/models", headers={"Origin": "http://evil.example"}).status_code == 403
        plain = http.post("/v1/chat/completions", content=body, headers={"Content-Type": "text/plain"})
        assert plain.status_code == 415 and plain.json()["error"]["type"] == "invalid_request_error"
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        assert http.post("/v1/chat/completions", content=body, headers=form).status_code == 415
        own = {"Origin": server.url, "Content-Type": "application/json; charset=utf-8"}
        assert http.post("/v1/chat/completions", content=body, headers=own).status_code == 200


def test_other_host_names_are_refused_on_a_loopback_bind(serve):
    server = serve("topics: {clock: {feed: demo}}\n")
    with server.client() as http:
        rebound = http.get("/api/topics", headers={"Host": f"attacker.example:{server.port}"})
        assert rebound.status_code == 421 and rebound.json()["error"]["code"] == "bad_host"
        assert (
            http.post("/v1/chat/completions", json={}, headers={"Host": "attacker.example"}).status_code
            == 421
        )
        for name in ("localhost", "127.0.0.1", "[::1]"):
            assert http.get("/healthz", headers={"Host": f"{name}:{server.port}"}).status_code == 200
    named = serve(
        "server: {allowed_hosts: [dash.example.com, '*.internal']}\ntopics: {clock: {feed: demo}}\n"
    )
    with named.client() as http:
        assert http.get("/healthz", headers={"Host": "dash.example.com"}).status_code == 200
        assert http.get("/healthz", headers={"Host": "a.b.internal:8000"}).status_code == 200
        assert http.get("/healthz", headers={"Host": "localhost"}).status_code == 421


def test_cors_is_off_by_default_and_opens_reads_to_named_origins_only(serve):
    closed = serve("topics: {clock: {feed: demo}}\n")
    with closed.client() as http:
        response = http.get("/api/topics", headers={"Origin": "https://wiki.example"})
        assert "access-control-allow-origin" not in response.headers
    server = serve("server: {cors_origins: ['https://wiki.example']}\ntopics: {clock: {feed: demo}}\n")
    with server.client() as http:
        allowed = http.get("/api/topics", headers={"Origin": "https://wiki.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://wiki.example"
        assert "access-control-allow-credentials" not in allowed.headers
        preflight = http.options(
            "/sse/clock",
            headers={
                "Origin": "https://wiki.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "last-event-id",
            },
        )
        assert preflight.status_code == 200
        # with CORS on, the streams take the middleware path (for these headers), and still stream
        with connect_sse(http, "GET", "/sse/clock", headers={"Origin": "https://wiki.example"}) as source:
            assert source.response.headers["access-control-allow-origin"] == "https://wiki.example"
            assert next(real_events(source.iter_sse())).data
        other = http.get("/api/topics", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        relay = http.options(
            "/v1/chat/completions",
            headers={"Origin": "https://wiki.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in relay.headers
    cookies = "server: {cors_origins: ['https://wiki.example'], cors_credentials: true}\n"
    with_cookies = serve(cookies + "topics: {clock: {feed: demo}}\n")
    with with_cookies.client() as http:
        allowed = http.get("/api/topics", headers={"Origin": "https://wiki.example"})
        assert allowed.headers["access-control-allow-credentials"] == "true"


def serve_on_all_interfaces(tmp_path, config: str) -> subprocess.CompletedProcess | subprocess.Popen:
    path = tmp_path / "config.yaml"
    path.write_text(config)
    cmd = [sys.executable, "-m", "dashboard", "serve", "--config", str(path), "--host", "0.0.0.0"]
    return subprocess.Popen(
        [*cmd, "--port", str(free_port())],
        cwd=tmp_path,  # where the default broker's file goes
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


PAID = """
ai:
  providers:
    - {name: paid, base_url: "http://127.0.0.1:9/v1", api_key: sk-test-0123456789, models: ["*"]}
"""


@pytest.mark.parametrize(
    "config, names",
    [
        (PAID + "topics: {clock: {feed: demo}}\n", "auth.api_tokens"),
        ("topics: {alerts: {feed: notifications}}\n", "auth.publish_tokens"),
        # api tokens, but the page's prompt box would let anyone who opens the page spend
        (
            PAID + "auth: {api_tokens: [t0k3n]}\ntopics: {chat: {feed: ai, options: {model: m}}}\n",
            "auth.viewers",
        ),
    ],
    ids=["open-relay", "publish-without-tokens", "open-prompt-box"],
)
def test_serve_on_a_network_address_refuses_to_open_what_has_no_tokens(tmp_path, config, names):
    proc = serve_on_all_interfaces(tmp_path, config)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode not in (0, None), output
    assert names in output and "refusing to serve on 0.0.0.0" in output
    # `dashboard check` says so too when the config itself names a network address
    path = tmp_path / "config.yaml"
    path.write_text("server: {host: 0.0.0.0}\n" + config)
    check = subprocess.run(
        [sys.executable, "-m", "dashboard", "check", str(path)], cwd=ROOT, capture_output=True, text=True
    )
    assert check.returncode == 1 and names in check.stdout, check.stdout + check.stderr


@pytest.mark.parametrize(
    "auth",
    ["auth: {api_tokens: [t0k3n], publish_tokens: [p0k3n]}", "auth: {open_on_network: [ai, publish]}"],
    ids=["tokens", "opened-on-purpose"],
)
def test_serve_on_a_network_address_starts_with_tokens_or_when_told_and_says_what_is_open(tmp_path, auth):
    proc = serve_on_all_interfaces(tmp_path, PAID + auth + "\ntopics: {alerts: {feed: notifications}}\n")
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("Host header" in line for line in lines):
            lines.append(proc.stdout.readline())
        output = "".join(lines)
        assert "serving on http://0.0.0.0:" in output, output
        assert "access: topics: readable by anyone who reaches the port" in output
        if "t0k3n" in auth:
            assert "1 api token(s)" in output and "t0k3n" not in output
        else:
            assert "AI relay and prompts: anyone who reaches the port" in output
        assert "access: Host header: any" in output
    finally:
        proc.terminate()
        proc.wait(15)


def test_tokens_in_urls_stay_out_of_the_access_log(serve):
    server = serve(VIEWERS, args=["--access-log"])
    viewer = token(["cpu"])
    with server.client() as http:
        assert http.get(f"/api/topics?token={viewer}").status_code == 200
        assert http.get(f"/?token={viewer}").status_code == 303
    deadline = time.monotonic() + 10
    while "/api/topics?token=" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "/api/topics?token=<hidden>" in server.output()
    assert viewer not in server.output()
    with server.client() as http:  # however the name is written
        assert http.get(f"/api/topics?%74oken={viewer}&x=1").status_code == 200
    deadline = time.monotonic() + 10
    while "%74oken=" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "?%74oken=<hidden>&x=1" in server.output() and viewer not in server.output()


def test_secret_looking_parameters_of_any_spelling_stay_out_of_the_access_log(serve):
    server = serve("topics: {clock: {feed: demo}}\n", args=["--access-log"])
    names = [
        "TOKEN",
        "Token",
        "token%00",
        "%2574oken",  # encoded twice
        "to%6Ben",
        "access_token",
        "api_key",
        "key",
        "X-Api-Key",
        "client_secret",
        "password",
        "sig",
        "auth",
    ]
    values = {name: f"s3cr3t{n:02d}value" for n, name in enumerate(names)}
    query = "&".join(f"{name}={value}" for name, value in values.items())
    with server.client() as http:
        assert http.get(f"/healthz?theme=dark&{query}&replay=0").status_code == 200
    deadline = time.monotonic() + 10
    while "/healthz?" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    [line] = [line for line in server.output().splitlines() if "/healthz?" in line]
    for name, value in values.items():
        assert value not in line, (name, line)
        assert f"{name}=<hidden>" in line, (name, line)
    assert "?theme=dark&" in line and line.count("<hidden>") == len(names) and "&replay=0 " in line


def test_who_may_not_read_learns_no_topic_names(server):
    with server.client() as http:
        for name in ("cpu", "no-such-topic"):  # private and unknown look alike
            anonymous = opened(http, f"/sse/{name}")
            assert anonymous.status_code == 401, anonymous.read()
            assert opened(http, f"/sse/{name}", headers=bearer(token(["ci.*"]))).status_code == 403
        assert opened(http, "/sse/no-such-topic", headers=bearer(token(["*"]))).status_code == 404


def test_a_loopback_bind_answers_the_address_it_serves_on(serve):
    server = serve("topics: {clock: {feed: demo}}\n", args=["--host", "127.0.0.2"])
    assert server.url.startswith("http://127.0.0.2:")
    with server.client() as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/healthz", headers={"Host": "attacker.example"}).status_code == 421


def test_the_page_signs_in_with_a_link_and_shows_only_the_viewers_panels(server, open_page):
    opened = open_page(f"{server.url}/?token={token(['ci.*'], sub='bob')}")
    page = opened.page
    assert "token=" not in page.url
    page.wait_for_selector('#connection[data-state="live"]')
    shown = page.eval_on_selector_all(".panel", "els => els.map(e => e.dataset.topic)")
    assert shown == ["lobby", "ci.build", "ci.test"]
    page.wait_for_selector('.panel[data-topic="ci.test"] [data-role="age"]:not(:empty)')
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads the token
    assert not opened.console_errors, opened.console_errors


def test_the_page_says_so_when_its_viewer_session_is_refused_and_stops_retrying(server, open_page):
    page = open_page(f"{server.url}/?token={token(['cpu'])}").page
    page.wait_for_selector('#connection[data-state="live"]')
    # The server comes back with another key: the cookie's token is now refused (401).
    server.config.write_text(VIEWERS.replace(SECRET, "a-new-viewer-secret-0123456789abcdef"))
    server.restart()
    page.wait_for_selector('#connection[data-state="signed out"]', timeout=30_000)
    assert "Open the dashboard again with a new link" in page.inner_text("#panels")
