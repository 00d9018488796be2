"""Helpers for the tasks the server owns."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


async def cancel_and_wait(tasks: Iterable[asyncio.Task]) -> None:
    """Cancel `tasks` and wait until every one has ended.

    Cancelling once is not always enough on Python 3.11: asyncio.wait_for (which redis-py uses
    around its writes) swallows a cancellation that lands just as what it waits for completes.
    So cancel again until each task has ended.
    """
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
