"""A clock or a random walk: the offline demo feed, and the smallest complete example of a feed."""

import asyncio
import random
import time
from typing import Literal

from pydantic import Field

from dashboard import Event, Feed


class Demo(Feed):
    """A clock or a random walk, for trying the dashboard offline."""

    default_view = "json"

    class Options(Feed.Options):
        mode: Literal["clock", "walk"] = "walk"
        interval: float = Field(1.0, gt=0, description="seconds between events")

    async def stream(self):
        value = 50.0
        while True:
            if self.options.mode == "clock":
                yield Event(data={"time": time.strftime("%H:%M:%S"), "epoch": round(time.time(), 3)})
            else:
                value = min(100.0, max(0.0, value + random.uniform(-5, 5)))
                yield Event(data={"value": round(value, 2)})
            await asyncio.sleep(self.options.interval)
