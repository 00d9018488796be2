"""Feeds used by the tests, loaded by the server from dotted paths (`tests.sample_feeds:Ticker`)."""

import asyncio

from pydantic import Field

from dashboard import Event, Feed


class Ticker(Feed):
    """Counts up at a fixed rate."""

    class Options(Feed.Options):
        rate_hz: float = 1.0

    async def stream(self):
        n = 0
        while True:
            n += 1
            yield Event(data={"n": n})
            await asyncio.sleep(1 / self.options.rate_hz)


class Flaky(Feed):
    """Yields `fail_after` events, then raises; the supervisor restarts it."""

    class Options(Feed.Options):
        fail_after: int = 3
        interval: float = 0.01

    async def stream(self):
        for n in range(self.options.fail_after):
            yield Event(data={"n": n})
            await asyncio.sleep(self.options.interval)
        raise RuntimeError("flaky feed broke on purpose")


class Hostile(Feed):
    """Publishes strings that try to forge SSE fields, once, then idles."""

    STRINGS = (
        "line one\nid: 999\nevent: forged\n\ndata: injected",
        "crlf\r\nid: 1\r\n\r\nevent: forged",
        "lone cr\rretry: 1\rdata: x",
        "trailing newline\n",
        "",
        "<script>window.__pwned = 1</script><b>bold</b>",
    )

    async def stream(self):
        for text in self.STRINGS:
            yield Event(data=text)
        yield Event(data={"text": "json\nwith\r\nbreaks"}, event="typed\nevent: forged")
        await asyncio.Event().wait()


class Bulky(Feed):
    """Large events at a high rate, to overrun a slow reader."""

    class Options(Feed.Options):
        size: int = Field(8192, ge=1)
        rate_hz: float = 200.0

    async def stream(self):
        pad = "x" * self.options.size
        n = 0
        while True:
            n += 1
            yield Event(data={"n": n, "pad": pad})
            await asyncio.sleep(1 / self.options.rate_hz)


class NotAnEvent(Feed):
    """Yields a plain dict, which is a mistake the supervisor reports."""

    async def stream(self):
        yield {"n": 1}


class NotAsync(Feed):
    """A stream written as a plain function returning a list: the feed is told how to write it."""

    def stream(self):  # type: ignore[override]
        return [Event(data={"n": 1})]


class PlainInbox(Feed):
    """Takes pushed events with a plain (not async) on_publish."""

    accepts_publish = True

    def on_publish(self, data):
        return [Event(data={"got": data})]
