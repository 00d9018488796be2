"""The ledger primitive in Redis: each account's sliding window in `<prefix>:window:<account>`
(one-second buckets), each UTC day's counters in `<prefix>:spend:<day>`, moved by Lua scripts so
that every instance admits against the same numbers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from dashboard.broker.contract import Hold, Limits, Refusal
from dashboard.broker.redis.scripts import RESERVE, SETTLE
from dashboard.errors import BrokerUnavailable


def _counters(flat: list[bytes]) -> dict[str, int]:
    return {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}


class RedisLedger:
    """`Broker.ledger_reserve`, `ledger_settle` and `ledger_day`, on the publishing connection."""

    def __init__(self, prefix: str, unavailable: Callable[[str, BaseException], BrokerUnavailable]) -> None:
        self.prefix = prefix
        self._unavailable = unavailable  # the error to raise when Redis does not answer
        self._client: aioredis.Redis | None = None

    def window_key(self, account: str) -> str:
        return f"{self.prefix}:window:{account}"

    def day_key(self, day: int | str = "") -> str:
        """The key of a day's counters (without a day: the prefix the reserve script completes)."""
        return f"{self.prefix}:spend:{day}"

    def use(self, client: aioredis.Redis) -> None:
        self._client = client
        self._reserve_script = client.register_script(RESERVE)
        self._settle_script = client.register_script(SETTLE)

    async def reserve(
        self, account: str, limits: Limits, tokens: int, nusd: int, *, window: int, days: int
    ) -> Hold | Refusal:
        assert self._client is not None, "broker not connected"
        args = [
            account,
            *("" if n is None else n for n in (limits.rpm, limits.tpm, limits.daily_nusd)),
            tokens,
            nusd,
            window,
            days,
        ]
        try:
            reply = await self._reserve_script(keys=[self.window_key(account), self.day_key()], args=args)
        except (RedisError, OSError) as exc:
            raise self._unavailable("check the key's limits", exc) from exc
        if reply[0] != b"ok":
            return Refusal(reply[0].decode(), int(reply[1]))
        return Hold(int(reply[1]), int(reply[2]))

    async def settle(
        self, account: str, hold: Hold, tokens: int, increments: list[tuple[str, int]], *, days: int
    ) -> dict[str, int]:
        assert self._client is not None, "broker not connected"
        args: list[Any] = [hold.second, tokens, days]
        for name, n in increments:
            args += [name, n]
        try:
            reply = await self._settle_script(
                keys=[self.window_key(account), self.day_key(hold.day)], args=args
            )
        except (RedisError, OSError) as exc:
            raise self._unavailable("settle a request's spend", exc) from exc
        return _counters(reply)

    async def day(self, day: int) -> dict[str, int]:
        assert self._client is not None, "broker not connected"
        try:
            reply = await self._client.hgetall(self.day_key(day))
        except (RedisError, OSError) as exc:
            raise self._unavailable("read the day's spend", exc) from exc
        return {k.decode(): int(v) for k, v in reply.items()}
