"""Helpers for the tasks the server owns."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Iterable
from contextvars import Context
from typing import Any, TypeVar

T = TypeVar("T")


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


async def finish_shielded(coro: Awaitable[T]) -> T:
    """Run `coro` to its end even when the calling task is cancelled (again and again, as
    cancel_and_wait does) meanwhile; that cancellation is raised once `coro` has finished.

    For cleanup in a `finally` that must not be cut short: stopping a feed, releasing its lease."""
    task = asyncio.ensure_future(coro)
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            cancelled = True  # whether or not `task` has just finished too
            if task.done():
                break
    if cancelled:
        if not task.cancelled() and task.exception() is not None:
            raise asyncio.CancelledError from task.exception()
        raise asyncio.CancelledError
    return task.result()


class TaskGroup:
    """Tasks started on someone's behalf (a feed's routes, its workers) that the server cancels,
    and waits for, when it stops."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def start(
        self, coro: Coroutine[Any, Any, T], *, name: str | None = None, context: Context | None = None
    ) -> asyncio.Task[T]:
        """Run `coro` as a task of this group (in `context`, a contextvars.Context, when given)."""
        task = asyncio.create_task(coro, name=name, context=context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel(self, *tasks: asyncio.Task) -> None:
        """Cancel `tasks` (all of the group's when none is named) and wait until they have ended."""
        await cancel_and_wait(tasks or tuple(self._tasks))

    async def aclose(self) -> None:
        await self.cancel()
