"""docs/EXTENDING.md: every example works as pasted (a feed with a route, a view, a broker)."""

from __future__ import annotations

import asyncio
import os
import re

from dashboard.broker import from_url
from dashboard.config import parse_config
from dashboard.events import Event
from dashboard.views import VIEWS, VIEWS_DIR
from tests.support import ROOT, read_events

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
    assert block("javascript") == (VIEWS_DIR / "json.js").read_text()


def test_the_broker_example_is_chosen_by_its_scheme_once_registered(tmp_path, monkeypatch):
    (tmp_path / "counting_broker.py").write_text(block("python", "# counting_broker.py"))
    dist = tmp_path / "counting_broker-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: counting-broker\nVersion: 1.0\n")
    entry = block("toml", '[project.entry-points."dashboard.brokers"]').splitlines()[1].replace('"', "")
    (dist / "entry_points.txt").write_text(f"[dashboard.brokers]\n{entry}\n")
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
