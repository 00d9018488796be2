"""AI spend today, per api key and per model: requests, tokens and US dollars, as requests settle.

Every instance publishes the day's totals (kept in the broker, so shared by every instance) when one
of its completions settles; the leader publishes them once at start so a new panel is not empty.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dashboard import Event, Feed


class Spend(Feed):
    """AI spend today per api key and per model, updated as completions settle."""

    default_view = "table"

    def attach(self, publish: Any, context: Any = None) -> None:
        super().attach(publish, context)
        context.keys.add_listener(self)

    async def stream(self):
        yield Event(await self.context.keys.today())
        await asyncio.Event().wait()  # then the server's settlements publish here
