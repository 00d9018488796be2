"""Feeds for the scale-out tests: each event names the process that published it."""

from __future__ import annotations

import asyncio
import os

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dashboard import Event, Feed


class Counter(Feed):
    """Counts up, tagging each event with the publishing process; POST /feeds/{topic}/push adds one."""

    class Options(Feed.Options):
        interval: float = 0.05

    async def stream(self):
        n = 0
        while True:
            n += 1
            yield Event(data={"pid": os.getpid(), "n": n})
            await asyncio.sleep(self.options.interval)

    def routes(self):
        return [Route("/push", self.push, methods=["POST"])]

    async def push(self, request: Request) -> JSONResponse:
        message = await self.publish(Event(data={"pid": os.getpid(), "pushed": await request.json()}))
        return JSONResponse({"id": message.id})


class Pushed(Counter):
    """Push-only: no stream, so no leader."""

    stream = Feed.stream
