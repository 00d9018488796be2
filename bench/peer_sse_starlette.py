"""The baseline: a bare sse-starlette broadcaster, as a user writes it by hand.

One `asyncio.Queue` per subscriber, a publisher task putting each event on every queue, and an
`EventSourceResponse` per subscriber. Run: python -m bench.peer_sse_starlette PORT RATE_HZ SIZE
"""

import asyncio
import contextlib
import json
import sys
import time

import uvicorn
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.routing import Route

subscribers: set[asyncio.Queue] = set()


async def publisher(rate_hz: float, size: int) -> None:
    pad = "x" * max(0, size - 40)
    loop = asyncio.get_running_loop()
    start = loop.time()
    n = 0
    while True:
        n += 1
        data = json.dumps({"t": time.time(), "n": n, "pad": pad})
        for queue in subscribers:
            queue.put_nowait({"id": str(n), "data": data})
        await asyncio.sleep(max(0.0, start + n / rate_hz - loop.time()))


async def stream(request):
    queue: asyncio.Queue = asyncio.Queue()
    subscribers.add(queue)

    async def events():
        try:
            while True:
                yield await queue.get()
        finally:
            subscribers.discard(queue)

    return EventSourceResponse(events(), ping=15)


def main() -> None:
    port, rate_hz, size = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])

    @contextlib.asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(publisher(rate_hz, size))
        yield
        task.cancel()

    app = Starlette(routes=[Route("/sse/bench", stream)], lifespan=lifespan)
    print(f"serving on http://127.0.0.1:{port}", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
