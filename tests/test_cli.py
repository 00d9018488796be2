"""The `dashboard` command: help, feeds, and the offline default with no config at all."""

import os
import shutil
import signal
import subprocess
import sys

import pytest

from tests.support import ROOT, Server, read_events, sse_stream


def run(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dashboard", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("command", ["serve", "check", "feeds"])
def test_each_command_has_useful_help(command):
    result = run(command, "--help")
    assert result.returncode == 0
    assert "usage: dashboard" in result.stdout
    if command != "feeds":
        assert "--config" in result.stdout and "config.yaml" in result.stdout


def test_feeds_lists_builtins_with_a_description():
    result = run("feeds")
    assert result.returncode == 0
    line = next(line for line in result.stdout.splitlines() if line.startswith("demo "))
    assert "built-in" in line and "random walk" in line


def test_offline_default_without_any_config_file(tmp_path):
    """In a folder with no config.yaml, `dashboard serve` uses the built-in default."""
    server = Server(config=tmp_path / "unused", log=tmp_path / "server.log")
    cmd = [sys.executable, "-m", "dashboard", "serve", "--port", "0"]
    with (tmp_path / "server.log").open("wb") as log:
        server.proc = subprocess.Popen(
            cmd,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        server.wait_for_url()
        output = server.output()
        assert "config: <built-in default>" in output
        assert f"events: in {tmp_path / 'dashboard.db'} (kept across restarts)" in output, output
        with server.client() as client:
            topics = client.get("/api/topics").json()["topics"]
            assert {t["feed"] for t in topics.values()} >= {"demo", "ai"}, topics
            for name, topic in topics.items():
                if topic["feed"] == "ai":
                    # the simulated provider answers offline, with no key
                    assert client.post(f"/feeds/{name}/prompt", json={"prompt": "hi"}).status_code == 202
                    done = read_events(client, f"/sse/{name}", 1, skip=("status", "prompt", "token"))
                    assert done[0].event == "done" and done[0].json()["simulated"] is True
                else:
                    assert read_events(client, f"/sse/{name}", 1)
            assert client.get("/").status_code == 200
    finally:
        server.stop()


def test_entry_point_feeds_are_listed_and_usable_by_name(tmp_path):
    """A package that registers under `dashboard.feeds` is a feed type by its entry-point name."""
    (tmp_path / "ticker_plugin.py").write_text((ROOT / "tests" / "sample_feeds.py").read_text())
    dist = tmp_path / "ticker_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ticker-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[dashboard.feeds]\nticker = ticker_plugin:Ticker\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}

    listed = subprocess.run(
        [sys.executable, "-m", "dashboard", "feeds"], capture_output=True, text=True, env=env, timeout=60
    )
    line = next(line for line in listed.stdout.splitlines() if line.startswith("ticker "))
    assert "entry point" in line and "Counts up at a fixed rate." in line

    config = tmp_path / "config.yaml"
    config.write_text("topics:\n  count: {feed: ticker, options: {rate_hz: 5}}\n")
    checked = subprocess.run(
        [sys.executable, "-m", "dashboard", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr


def test_a_feed_module_in_the_current_folder_is_found_by_the_dashboard_command(tmp_path):
    """README "A first panel in five minutes": the module sits in the folder `dashboard` is started from."""
    (tmp_path / "myfeeds.py").write_text((ROOT / "tests" / "sample_feeds.py").read_text())
    (tmp_path / "config.yaml").write_text('topics:\n  count: {feed: "myfeeds:Ticker"}\n')
    command = shutil.which("dashboard")
    assert command, "the dashboard command is not installed (python -m pip install -e .)"
    for args in (["check"], ["check", "config.yaml"]):
        result = subprocess.run([command, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "OK, 1 topic(s): count" in result.stdout


def test_serve_ends_open_streams_when_told_to_stop(serve):
    """SIGTERM ends open streams at once: uvicorn would otherwise wait for them until its graceful
    shutdown timeout, and then cancel them."""
    server = serve("topics:\n  t: {feed: metrics}\n")
    with server.client() as client, sse_stream(client, "/sse/t") as events:
        next(iter(events))
        server.proc.send_signal(signal.SIGTERM)
        rest = list(events)  # the server ends the stream; the client does not hang up
    server.proc.wait(30)  # uvicorn re-raises the signal once it has shut down
    assert "graceful shutdown exceeded" not in server.output(), server.output()
    assert all(e.event in ("message", "status") for e in rest), rest


def test_check_and_serve_warn_of_a_budget_that_no_price_can_reach(tmp_path, serve):
    """A daily_usd budget counts spend by the providers' prices: without them it never binds."""
    provider = "    - {name: up, base_url: 'http://127.0.0.1:9/v1', api_key: sk-x%s}\n"
    config = tmp_path / "config.yaml"

    def check(prices: str) -> subprocess.CompletedProcess:
        config.write_text(
            "auth:\n  api_keys:\n    - {name: team, token: team-token, daily_usd: 5}\n"
            "ai:\n  providers:\n" + provider % prices + "topics: {}\n"
        )
        command = [sys.executable, "-m", "dashboard", "check", "--config", str(config)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    unpriced = check("")
    assert unpriced.returncode == 0, unpriced.stderr
    assert "warning: provider 'up' has no prices" in unpriced.stdout, unpriced.stdout
    assert "api key(s) team" in unpriced.stdout and "sk-x" not in unpriced.stdout
    server = serve(config.read_text())  # the startup lines say it too
    assert "warning: provider 'up' has no prices" in server.output(), server.output()
    priced = check(", prices: {input: 1, output: 2}")
    assert priced.returncode == 0 and "warning" not in priced.stdout, priced.stdout


def test_a_port_in_use_is_named_with_the_fix_before_anything_starts(serve):
    first = serve("topics: {tick: {feed: demo}}\n")
    port = first.url.rsplit(":", 1)[1]
    done = subprocess.run(
        [sys.executable, "-m", "dashboard", "serve", "--config", str(first.config), "--port", port],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"refusing to start: port {port} on 127.0.0.1 is in use (another server listens there): stop it, "
        "or serve on another port with --port N (--port 0 picks a free one)"
    )
    assert "Errno" not in done.stderr and "Traceback" not in done.stderr
    assert "Started server process" not in done.stderr + done.stdout  # nothing started
