"""The benchmark's publisher as a feed: timestamped events at a fixed rate."""

import asyncio
import math
import time

from dashboard import Event, Feed


class Stamp(Feed):
    """Events carrying their publish time, at `rate_hz`, padded to about `size` bytes; a benchmark
    may also POST one (`Target.publish`)."""

    accepts_publish = True

    class Options(Feed.Options):
        rate_hz: float = 20.0
        size: int = 100

    async def stream(self):
        pad = "x" * max(0, self.options.size - 40)
        n = 0
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            n += 1
            yield Event(data={"t": time.time(), "n": n, "pad": pad})
            # Scheduled against the start so the rate does not drift with the publish cost.
            await asyncio.sleep(max(0.0, start + n / self.options.rate_hz - loop.time()))


class Wave(Feed):
    """A number on a wave, with a title and a level, at `rate_hz`: every view has something to show."""

    class Options(Feed.Options):
        rate_hz: float = 50.0

    async def stream(self):
        levels = ("info", "success", "warning", "error")
        n = 0
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            n += 1
            value = 50 + 40 * math.sin(n / 25)
            yield Event(data={"value": value, "title": f"event {n}", "level": levels[n % 4]})
            await asyncio.sleep(max(0.0, start + n / self.options.rate_hz - loop.time()))
