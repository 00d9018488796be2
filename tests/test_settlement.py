"""A reservation is always settled, whatever step of a completion fails: the provider (dead, an
error status, an error or a reset mid-stream, silence), the client (leaving mid-stream), the
server's own code (an exception in the relay, in its measurements, in writing to the client) or
the server stopping. Through the real server for the first two, in process for the third, for the
/v1 routes and the `ai` feed alike (both run the relay's one completion lifecycle)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from dashboard.broker.memory import MemoryBroker
from dashboard.config import parse_config
from dashboard.relay import Relay
from dashboard.relay.keys import Account, Keys
from dashboard.relay.ledger import Ledger
from dashboard.relay.lifecycle import Completion, Completions
from dashboard.relay.metrics import Measure
from dashboard.runtime import Runtime
from dashboard.web import relay as relay_routes
from feeds.ai import Job
from tests.support import run_async
from tests.test_keys import HI, KEY, TEAM, keys_config, openai_sdk, spend_when, used

FAILING_MODELS = ["t-error-mid", "t-reset", "t-drop", "t-bad-request", "h-silent", "c-dead", "m-error-mid"]


def test_every_failing_provider_path_gives_the_reservation_back(upstream, serve):
    import openai

    keys = f"    - {{name: team-a, token: {TEAM}, daily_usd: 1.0}}\n"
    extra = "  broken: {feed: ai, options: {model: t-error-mid}}\n  dead: {feed: ai, options: {model: c-x}}"
    server = serve(keys_config(upstream, keys, extra=extra), env={"RELAY_TEST_KEY": KEY})
    client = openai_sdk(server, TEAM)
    requests = 0
    for model in FAILING_MODELS:
        for stream in (True, False):
            with pytest.raises(openai.APIError):
                answer = client.chat.completions.create(model=model, messages=HI, stream=stream)
                if stream:
                    list(answer)
            requests += 1
    # The client leaves mid-stream.
    with server.client() as http:
        body = {"model": "t-slow", "messages": HI, "stream": True}
        headers = {"authorization": f"Bearer {TEAM}"}
        with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
            assert response.status_code == 200
            next(response.iter_bytes())
        requests += 1
        # The ai feed, charged to the key through the token: an error mid-stream, a dead provider.
        for topic in ("broken", "dead"):
            assert (
                http.post(f"/feeds/{topic}/prompt", json={"prompt": "x"}, headers=headers).status_code == 202
            )
            requests += 1
    report = spend_when(server, lambda r: used(r, "team-a") == requests, timeout=30)
    assert report["keys"]["team-a"]["held_usd"] == 0, report


# -- in process: the server's own code failing at each step ----------------------------------------
CONFIG = """
ai:
  providers:
    - {name: sim, type: simulated, models: [simulated], prices: {input: 1.0, output: 2.0},
       simulation: {tokens_per_s: 2000, first_token_ms: 1}}
auth:
  api_keys: [{name: k, token: tok-settle-0123456789, daily_usd: 1.0}]
"""
BODY = {"model": "simulated", "messages": HI, "max_tokens": 20}


class Boom(RuntimeError):
    pass


async def _relay_once(monkeypatch, step: str, stream: bool) -> int:
    """Admit one request, break `step`, run the response; the nano-dollars still held after."""
    config = parse_config(CONFIG)
    broker = MemoryBroker(history=10)
    relay = Relay(config.ai)
    keys = Keys(config, broker, relay)
    account = keys.by_token("tok-settle-0123456789")
    assert isinstance(account, Account)
    measure = Measure(model="simulated")
    completion = await Completions(relay, keys).admit(account, {**BODY, "stream": stream}, measure)
    assert (await keys.ledger.spend())["keys"]["k"]["reserved"] > 0, "the request holds part of the budget"

    def boom(*args, **kwargs):
        raise Boom(step)

    if step == "open":
        monkeypatch.setattr(Relay, "open_stream" if stream else "complete", boom)
    elif step == "measure":
        monkeypatch.setattr(Measure, "record", boom)
    elif step == "log":
        monkeypatch.setattr(Completion, "log", boom)
    settling = asyncio.Event()
    if step == "stop":  # settling takes a round trip, as it does on Redis: a cancel can land in it
        settle = Ledger.settle

        async def slow_settle(self, *args):
            settling.set()
            await asyncio.sleep(0.05)
            return await settle(self, *args)

        monkeypatch.setattr(Ledger, "settle", slow_settle)
    kind = relay_routes.RelayedStream if stream else relay_routes.RelayedCompletion
    response = kind(completion, relay_routes.OPENAI)
    sent: list[dict] = []

    async def send(message: dict) -> None:
        if step == "send" and message["type"] == "http.response.body":
            raise OSError("the client's socket broke")
        sent.append(message)

    async def receive() -> dict:
        await asyncio.Event().wait()
        return {}

    scope = {"type": "http", "method": "POST", "headers": []}
    task = asyncio.create_task(response(scope, receive, send))
    if step == "stop":  # the server stops mid-answer: cancelled, and cancelled again while settling
        while not sent:
            await asyncio.sleep(0.001)
        task.cancel()
        await asyncio.wait_for(settling.wait(), 10)
        task.cancel()
    with (
        pytest.raises((Boom, OSError, asyncio.CancelledError)) if step != "none" else contextlib.nullcontext()
    ):
        await task
    await relay.aclose()
    return (await keys.ledger.spend())["keys"]["k"]["reserved"]


STEPS = [(step, True) for step in ("none", "open", "measure", "log", "send", "stop")]
STEPS += [(step, False) for step in ("none", "open", "measure", "log", "send")]  # no mid-answer to stop


@pytest.mark.parametrize(("step", "stream"), STEPS)
def test_the_reservation_is_settled_whatever_step_of_the_relay_fails(monkeypatch, step, stream):
    assert run_async(_relay_once(monkeypatch, step, stream)) == 0


async def _prompt_once(monkeypatch, step: str) -> int:
    """Run one prompt of the `ai` feed with `step` broken; the nano-dollars still held after."""
    topics = "topics: {chat: {feed: ai, options: {model: simulated, max_tokens: 20}}}\n"
    runtime = Runtime(parse_config(CONFIG + topics))
    feed = runtime.feeds["chat"]
    account = runtime.keys.by_token("tok-settle-0123456789")
    assert isinstance(account, Account)
    job = Job(id="cmpl-settle", prompt="hi", account=account)
    published: list[str] = []
    publish = feed.publish

    async def publish_or_break(event):
        if step == "publish" and event.event == "token":
            raise OSError("the broker's connection broke")
        published.append(event.event)
        return await publish(event)

    def boom(*args, **kwargs):
        raise Boom(step)

    monkeypatch.setattr(feed, "publish", publish_or_break)
    if step == "open":
        monkeypatch.setattr(Relay, "open_stream", boom)
    elif step == "measure":
        monkeypatch.setattr(Measure, "record", boom)
    elif step == "log":
        monkeypatch.setattr(Completion, "log", boom)
    held = 0

    async def reserved() -> int:
        return (await runtime.keys.ledger.spend())["keys"].get("k", {}).get("reserved", 0)

    async def watch() -> None:  # the reservation is held while the completion runs
        nonlocal held
        while True:
            held = max(held, await reserved())
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    task = asyncio.create_task(feed._complete(job))
    if step in ("stop", "cancel"):  # stopped by its route, or the server stops mid-answer (twice)
        while "token" not in published:
            await asyncio.sleep(0.001)
        job.stopping = step == "stop"
        task.cancel()
        await asyncio.sleep(0)
        if step == "cancel":
            task.cancel()
    failures = (Boom, OSError, asyncio.CancelledError)
    with pytest.raises(failures) if step not in ("none", "stop") else contextlib.nullcontext():
        await task
    watcher.cancel()
    await runtime.relay.aclose()
    if step != "open":  # (that one may settle before the watcher looks)
        assert held > 0, "the prompt held part of the budget while it ran"
    if step == "stop":
        assert published[-1] == "done", published
    return await reserved()


@pytest.mark.parametrize("step", ["none", "open", "measure", "log", "publish", "stop", "cancel"])
def test_the_ai_feed_settles_its_reservation_whatever_step_fails(monkeypatch, step):
    assert run_async(_prompt_once(monkeypatch, step)) == 0
