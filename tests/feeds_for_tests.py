"""Small feeds the page tests run, named in their configs as `tests.feeds_for_tests:Class`."""

from __future__ import annotations

import asyncio
import itertools
import time

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dashboard import Event, Feed

# Text that would run or create elements if a view ever used innerHTML.
HOSTILE_HTML = '<img src=x onerror="window.__pwned=1"><b>bold</b>'
HOSTILE_SCRIPT = "<script>window.__pwned=2</script>"


class Counter(Feed):
    """Counts 1, 2, 3... so a test can tell whether any event was missed."""

    default_view = "log"

    class Options(Feed.Options):
        interval: float = 0.2

    async def stream(self):
        for n in itertools.count(1):
            yield Event(data={"n": n, "value": n % 7 + n / 10})
            await asyncio.sleep(self.options.interval)


class Notices(Feed):
    """Notifications in the shape of the notifications feed, cycling through the levels."""

    default_view = "list"

    class Options(Feed.Options):
        interval: float = 1.0

    async def stream(self):
        levels = ["info", "success", "warning", "error"]
        texts = [
            ("Deploy finished", "api v2.3.1 is live on all hosts"),
            ("Backup complete", "nightly snapshot, 14.2 GB"),
            ("Disk almost full", "/var at 91% on db-1"),
            ("Job failed", "invoice export exited with status 1"),
        ]
        for n in itertools.count(1):
            title, body = texts[(n - 1) % 4]
            yield Event(
                data={
                    "id": f"n{n}",
                    "title": title,
                    "body": body,
                    "level": levels[(n - 1) % 4],
                    "source": "ci",
                    "url": "https://example.org/runs/1",
                }
            )
            await asyncio.sleep(self.options.interval)


class Hostile(Feed):
    """Events whose text carries HTML and script, in every shape the views read."""

    event_types = ("prompt", "token", "done", "error")

    class Options(Feed.Options):
        interval: float = 0.5

    async def stream(self):
        for n in itertools.count(1):
            completion = f"c{n}"
            yield Event(
                data={
                    "id": f"h{n}",
                    "title": HOSTILE_HTML,
                    "body": HOSTILE_SCRIPT,
                    "level": '"><img src=x onerror="window.__pwned=3">',
                    "source": HOSTILE_HTML,
                    "url": "javascript:window.__pwned=4",
                    "value": HOSTILE_HTML,
                    HOSTILE_HTML: n,  # a numeric field whose name is HTML: chart legends show it
                }
            )
            yield Event(data=HOSTILE_SCRIPT)  # a plain text event
            yield Event(
                event="prompt",
                data={"completion": completion, "prompt": HOSTILE_SCRIPT, "model": HOSTILE_HTML},
            )
            yield Event(event="token", data={"completion": completion, "text": HOSTILE_HTML})
            yield Event(
                event="error", data={"completion": completion, "code": "x", "message": HOSTILE_SCRIPT}
            )
            await asyncio.sleep(self.options.interval)


class Crashy(Feed):
    """Publishes a couple of events, then fails (with HTML in its error) and is restarted."""

    class Options(Feed.Options):
        events: int = 2

    async def stream(self):
        for n in range(self.options.events):
            yield Event(data={"n": n})
            await asyncio.sleep(0.05)
        raise RuntimeError("upstream gone <b>bold</b>")


class Secretive(Feed):
    """A feed whose options hold a secret the page must never show."""

    class Options(Feed.Options):
        secret: str
        interval: float = 1.0

    async def stream(self):
        while True:
            yield Event(data={"ok": True})
            await asyncio.sleep(self.options.interval)


class ScriptedChat(Feed):
    """Follows the AI feed's event contract with a scripted answer, so the chat view can be tested
    on its own: POST prompt -> `prompt`, one `token` per word, then `done`; POST stop ends it early."""

    default_view = "chat"
    event_types = ("prompt", "token", "done", "error")

    class Options(Feed.Options):
        words: int = 200
        delay: float = 0.05
        max_queue: int = 10  # prompts waiting; more get 429

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.stopped: set[str] = set()
        self.ids = itertools.count(1)

    def routes(self):
        return [Route("/prompt", self.prompt, methods=["POST"]), Route("/stop", self.stop, methods=["POST"])]

    async def prompt(self, request: Request) -> JSONResponse:
        body = await request.json()
        if self.queue.qsize() >= self.options.max_queue:
            return JSONResponse({"error": {"code": "busy", "message": "queue full"}}, status_code=429)
        completion = f"cmpl-{next(self.ids)}"
        await self.queue.put((completion, body["prompt"]))
        return JSONResponse({"completion": completion}, status_code=202)

    async def stop(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.stopped.add(body["completion"])
        return JSONResponse({"stopped": body["completion"]})

    async def stream(self):
        loop = asyncio.get_running_loop()
        while True:
            completion, prompt = await self.queue.get()
            started = loop.time()
            yield Event(
                event="prompt", data={"completion": completion, "prompt": prompt, "model": "scripted"}
            )
            sent = 0
            first = None
            for i in range(self.options.words):
                if completion in self.stopped:
                    break
                await asyncio.sleep(self.options.delay)
                first = first or loop.time()
                yield Event(event="token", data={"completion": completion, "text": f"word{i} "})
                sent += 1
            took = loop.time() - started
            yield Event(
                event="done",
                data={
                    "completion": completion,
                    "finish_reason": "stop",
                    "stopped": completion in self.stopped,
                    "usage": {"completion_tokens": sent},
                    "ttft_ms": round(((first or loop.time()) - started) * 1000, 1),
                    "tokens_per_s": round(sent / took, 1) if took else 0.0,
                    "duration_ms": round(took * 1000, 1),
                    "provider": "scripted",
                    "simulated": True,
                },
            )


class Poison(Feed):
    """Between good events (`{"n": 1}`, `{"n": 2}`...), one of each kind of event no reader could
    be sent: each must be skipped with a status saying why, and the feed must go on."""

    BAD = [
        Event(data="text with a lone surrogate \ud800"),
        Event(data={"prompt": "hi \udc00"}),
        Event(data={"value": float("nan")}),
        Event(data={"value": float("inf")}),
        Event(data={(1, 2): "a tuple key"}),
        Event(data={"a set": {1, 2}}),
        Event(data={"x": 1}, event="bad\ud800type"),
        Event(data={"x": 1}, event="nul\x00byte"),
        Event(data={"x": 1}, id="not a number"),
    ]

    async def stream(self):
        for n, bad in enumerate([*self.BAD, None], start=1):
            yield Event(data={"n": n})
            if bad is not None:
                yield bad
        await asyncio.Event().wait()


class Gauges(Feed):
    """Fixed readings with a time field: a rate in bytes per second, a percentage past its
    thresholds, and a timestamp that no panel should pick as a measurement."""

    class Options(Feed.Options):
        interval: float = 0.2

    async def stream(self):
        while True:
            yield Event(data={"ts": time.time(), "rate": 2268, "cpu": 95.0})
            await asyncio.sleep(self.options.interval)


class Words(Feed):
    """Events with no number at all: a numeric panel on them says which fields it saw."""

    class Options(Feed.Options):
        interval: float = 0.2

    async def stream(self):
        while True:
            yield Event(data={"status": "ok", "host": "a"})
            await asyncio.sleep(self.options.interval)


class Ledger(Feed):
    """A spend report's shape: totals, then rows per key and per model."""

    async def stream(self):
        yield Event(
            data={
                "day": "2026-12-04",
                "cost_usd": 0.0042,
                "keys": {
                    "team-a": {"requests": 3, "cost_usd": 0.004},
                    "team-b": {"requests": 1, "cost_usd": 0.0002},
                },
                "models": {"gpt-x": {"requests": 4, "completion_tokens": 1200}},
            }
        )
        await asyncio.Event().wait()
