"""Helpers for the tasks the server owns."""

from __future__ import annotations

import asyncio
from collections import deque
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


class Turns:
    """At most `per_turn` callers of `wait()` go on in one turn of the event loop; the others wait,
    first come first served, for later turns. Between turns the loop serves its I/O: a burst of new
    requests, each a fraction of a millisecond of work before its first wait, then cannot hold up
    the streams already under way for the whole burst. A caller that finds room goes on at once."""

    def __init__(self, per_turn: int) -> None:
        self.per_turn = per_turn
        self.went = 0  # callers that went on in this turn
        self.waiting: deque[asyncio.Future[None]] = deque()
        self.scheduled = False

    async def wait(self) -> None:
        if self.went < self.per_turn and not self.waiting:
            self.went += 1
            self._next_turn_soon()
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiting.append(waiter)
        self._next_turn_soon()
        await waiter  # a caller cancelled meanwhile is passed over

    def _next_turn_soon(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        """A new turn: the next callers in line go on in it (each woken for the turn after this
        callback's, which is when they run)."""
        self.scheduled = False
        self.went = 0
        waiting = self.waiting
        while waiting and self.went < self.per_turn:
            waiter = waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self.went += 1
        if waiting or self.went:
            self._next_turn_soon()
