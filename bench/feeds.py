"""The benchmark's publisher as a feed: timestamped events at a fixed rate."""

import asyncio
import time

from dashboard import Event, Feed


class Stamp(Feed):
    """Events carrying their publish time, at `rate_hz`, padded to about `size` bytes."""

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
