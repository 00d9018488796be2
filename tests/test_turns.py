"""Turns (dashboard/tasks.py): a burst of callers goes on a few per turn of the event loop, in the
order they came, with the loop's other callbacks (its I/O) served between turns."""

from __future__ import annotations

import asyncio

from dashboard.tasks import Turns


def test_a_burst_goes_on_a_few_per_turn_in_order_with_other_work_between():
    async def go() -> tuple[list[tuple[str, int]], int]:
        turns = Turns(4)
        log: list[tuple[str, int]] = []
        turn = 0

        def tick() -> None:  # stands for the loop's I/O: it runs once per turn
            nonlocal turn
            turn += 1
            log.append(("tick", turn))
            if turn < 20:
                asyncio.get_running_loop().call_soon(tick)

        async def caller(n: int) -> None:
            await turns.wait()
            log.append(("went", n))

        asyncio.get_running_loop().call_soon(tick)
        await asyncio.gather(*(caller(n) for n in range(10)))
        return log, turn

    log, _ = asyncio.run(go())
    went = [n for kind, n in log if kind == "went"]
    assert went == list(range(10)), "first come, first served"
    per_turn: list[int] = []
    for kind, _ in log:
        if kind == "tick":
            per_turn.append(0)
        elif per_turn:
            per_turn[-1] += 1
    assert max(per_turn) <= 4 and sum(per_turn) == 10, per_turn
    assert sum(1 for n in per_turn if n) >= 3, "the burst is spread over several turns"


def test_a_lone_caller_does_not_wait_and_a_cancelled_one_is_passed_over():
    async def go() -> list[int]:
        turns = Turns(1)
        went: list[int] = []

        async def caller(n: int) -> None:
            await turns.wait()
            went.append(n)

        first = asyncio.ensure_future(caller(0))
        await asyncio.sleep(0)
        assert went == [0], "room in this turn: it goes on at once"
        await first
        tasks = [asyncio.ensure_future(caller(n)) for n in (1, 2, 3)]
        await asyncio.sleep(0)
        tasks[1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return went

    assert asyncio.run(go()) == [0, 1, 3]
