"""docs/EXTENDING.md: every example works as pasted (a feed with a route, a view, a broker, a dialect)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

import openai

from dashboard.broker import from_url
from dashboard.config import parse_config
from dashboard.events import Event
from dashboard.views import VIEWS, scripts
from tests.support import ROOT, read_events
from tests.upstream import answer_text

DOC = (ROOT / "docs" / "EXTENDING.md").read_text()


def block(language: str, first_line: str | None = None) -> str:
    """The doc's code block in `language` (the one opening with `first_line`, when given)."""
    for code in re.findall(rf"```{language}\n(.*?)```", DOC, re.S):
        if first_line is None or code.startswith(first_line):
            return code
    raise AssertionError(f"docs/EXTENDING.md has no {language} block starting {first_line!r}")


def test_the_feed_example_streams_and_serves_its_route(serve, tmp_path):
    (tmp_path / "tickers.py").write_text(block("python", "# tickers.py"))
    server = serve(
        block("yaml", "# config.yaml"), env={"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    )
    with server.client() as client:
        first = read_events(client, "/sse/count?replay=0", 2)
        assert first[1].json()["n"] == first[0].json()["n"] + 1, [e.data for e in first]
        answer = client.post("/feeds/count/jump", json={"to": 100})
        assert answer.status_code == 202, answer.text
        jumped = read_events(client, f"/sse/count?last_event_id={answer.json()['id'] - 1}", 1)
        assert (jumped[0].event, jumped[0].json()) == ("jump", {"n": 100})
        refused = client.post("/feeds/count/jump", json={"to": "far"})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "bad_request"


def test_the_view_example_is_the_json_view_as_shipped():
    assert "json" in VIEWS
    assert block("javascript") == scripts()["json"].decode()


def install(tmp_path, module: str, source: str, group: str, entry: str) -> None:
    """Install `module` as a package would: its file, and `entry` ("name = module:attr") in `group`."""
    (tmp_path / f"{module}.py").write_text(source)
    dist = tmp_path / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{entry}\n")


def register(tmp_path, module: str, group: str) -> None:
    """Install the example `module` from the doc as a package would: its file and its entry point."""
    entry = block("toml", f'[project.entry-points."{group}"]').splitlines()[1].replace('"', "")
    install(tmp_path, module, block("python", f"# {module}.py"), group, entry)


def test_the_broker_example_is_chosen_by_its_scheme_once_registered(tmp_path, monkeypatch):
    register(tmp_path, "counting_broker", "dashboard.brokers")
    monkeypatch.syspath_prepend(str(tmp_path))

    config = parse_config(block("yaml", "broker:") + "topics: {a: {feed: demo}}\n")
    broker = from_url(config.broker.url)
    assert type(broker).__name__ == "CountingBroker"

    async def scenario() -> list[int]:
        broker.add_topic("a")
        await broker.connect()
        ids = [(await broker.publish("a", Event({"n": n}))).id for n in range(3)]
        assert [m.id for m in await broker.read_history("a", None)] == ids
        await broker.disconnect()
        return ids

    assert len(asyncio.run(scenario())) == 3
    assert type(broker).stored == 3


def test_the_broker_example_passes_the_contract_suite_as_the_doc_runs_it(tmp_path):
    register(tmp_path, "counting_broker", "dashboard.brokers")
    command = re.search(r"`(DASHBOARD_BROKER_URLS=counting:// python -m pytest [^`]+)`", DOC).group(1)
    variable, _, args = command.partition(" python -m ")
    name, _, urls = variable.partition("=")
    env = {**os.environ, name: urls, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    run = subprocess.run(
        [sys.executable, "-m", *args.split(), "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", run.stdout).group(1))
    assert passed >= 10, run.stdout[-2000:]  # `-k counting` selects only the example's runs


HALF_SHARED = '''
from dashboard.broker.memory import MemoryBroker


class HalfSharedBroker(MemoryBroker):
    """Says its events reach every process, but keeps leases, claims and the ledger in one."""

    shared = True
'''


def test_a_shared_backend_lacking_part_of_the_contract_stops_the_server_at_start(tmp_path):
    """A shared backend that would let each process lead, claim and count api keys' limits on its
    own is refused before anything runs, with what it lacks named."""
    install(
        tmp_path, "half_shared", HALF_SHARED, "dashboard.brokers", "halfshared = half_shared:HalfSharedBroker"
    )
    config = tmp_path / "config.yaml"
    config.write_text('broker: {url: "halfshared://"}\ntopics: {a: {feed: demo}}\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    for command in (["serve", "--port", "0"], ["check"]):
        run = subprocess.run(
            [sys.executable, "-m", "dashboard", *command, "--config", str(config)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        output = run.stdout + run.stderr
        assert run.returncode != 0 and "serving on" not in output, output
        assert "halfshared://" in output and "is shared" in output, output
        for lacking in (
            "leases (acquire_lease(), release_lease())",
            "claims (claim(), unclaim())",
            "presence (share_presence(), presence_updates())",
            "the ledger primitive (ledger_reserve(), ledger_settle(), ledger_day())",
        ):
            assert lacking in output, output


def test_the_dialect_example_serves_a_provider_of_its_type(serve, upstream, tmp_path):
    register(tmp_path, "azure_dialect", "dashboard.dialects")
    config = block("yaml", "ai:").replace("https://my-resource.openai.azure.com", f"{upstream.url}/azure")
    server = serve(
        config + "topics: {}\n",
        env={"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "AZURE_OPENAI_KEY": "azure-test-key"},
    )
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=20)
    stream = client.chat.completions.create(
        model="az-echo", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == answer_text("azure")
    seen = upstream.requests("az-echo")[-1]
    assert seen.path == "/azure/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
    assert seen.headers["api-key"] == "azure-test-key" and "authorization" not in seen.headers


GAUGE_VIEW = """// gauge view: the latest number as a bar.
window.Dashboard.views.gauge = function (panel) {
  const bar = window.Dashboard.util.el("progress", { attrs: { max: "100" } });
  panel.body.append(bar);
  return { event(type, data) { if (typeof data.n === "number") bar.value = data.n % 100; } };
};
"""


def test_a_view_a_package_registers_is_checked_served_and_loaded_by_the_page(tmp_path, serve):
    """A view from a package (entry point `dashboard.views`, valued "package:path.js") is one the
    config may name, its script is served at /views/<name>.js and the page loads it; a registered
    view whose file is missing is a config error naming it."""
    package = tmp_path / "gauges"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "gauge.js").write_text(GAUGE_VIEW)
    dist = tmp_path / "gauges-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gauges\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[dashboard.views]\ngauge = gauges:gauge.js\nbroken = gauges:missing.js\n"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    server = serve("topics: {count: {feed: demo}}\npanels: [{topic: count, view: gauge}]\n", env=env)
    with server.client() as client:
        script = client.get("/views/gauge.js")
        assert script.status_code == 200 and script.text == GAUGE_VIEW
        assert script.headers["content-type"].startswith("text/javascript")
        again = client.get("/views/gauge.js", headers={"if-none-match": script.headers["etag"]})
        assert again.status_code == 304
        assert '<script src="views/gauge.js" defer>' in client.get("/").text
        assert client.get("/views/json.js").status_code == 200  # the built-in ones come the same way
        assert client.get("/views/nosuch.js").status_code == 404
    config = tmp_path / "broken.yaml"
    config.write_text("topics: {count: {feed: demo}}\npanels: [{topic: count, view: broken}]\n")
    run = subprocess.run(
        [sys.executable, "-m", "dashboard", "check", "--config", str(config)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "the script of view 'broken' does not load" in run.stdout + run.stderr, run.stdout + run.stderr
