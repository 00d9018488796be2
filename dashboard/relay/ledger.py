"""The ledger: what api keys' limits mean, and the books of what each key and model spends.

An account is held to requests and tokens per minute (a sliding window of one-second buckets) and
to nano-dollars per UTC day, counting what it spent and what its admitted requests still hold. A
request is admitted with an estimate (`reserve`), which is replaced by what it used (`settle`).

Where the counters are kept: in the broker when it is shared, through its ledger primitive (one
atomic step per admission for every instance, see dashboard/broker/contract.py); otherwise in
this process, by `LocalBooks`, which does the same arithmetic in Python.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol
from weakref import WeakKeyDictionary

from dashboard.broker import Broker, Hold, Limits, Refusal

__all__ = ["DAY", "NANO", "Ledger", "Limits", "LocalBooks", "Refusal", "Reservation"]

LIMIT_WINDOW = 60  # seconds of the sliding window of rpm and tpm (in one-second buckets)
DAY = 86400
SPEND_DAYS = 3  # days a day's spend is kept (today, yesterday, and one for clocks that differ)
NANO = 1_000_000_000  # costs are kept in whole nano-dollars, so sums are exact on every backend

Spend = dict[str, dict[str, dict[str, int]]]  # {"keys": {account: {counter: n}}, "models": {...}}


@dataclass(frozen=True)
class Reservation:
    """An admitted request's estimate, held against its account's limits until it is settled."""

    account: str
    model: str
    tokens: int  # counted in the tpm window
    nusd: int  # held against the day's budget
    second: int  # the window bucket it was counted in (Unix seconds)
    day: int  # the UTC day it is charged to (days since the epoch)


def spend_increments(res: Reservation, prompt: int, completion: int, nusd: int) -> list[tuple[str, int]]:
    """The day's counters a settled request moves: its account's and its model's; the account's
    reservation is given back."""
    out = [(f"k|{res.account}|reserved", -res.nusd)]
    for kind, name in (("k", res.account), ("m", res.model)):
        out += [
            (f"{kind}|{name}|requests", 1),
            (f"{kind}|{name}|prompt_tokens", prompt),
            (f"{kind}|{name}|completion_tokens", completion),
            (f"{kind}|{name}|nusd", nusd),
        ]
    return out


def parse_spend(fields: dict[str, int]) -> Spend:
    """A day's counters (`k|<account>|<counter>`, `m|<model>|<counter>`) as
    `{"keys": {account: {counter: n}}, "models": {model: {counter: n}}}`."""
    out: Spend = {"keys": {}, "models": {}}
    for field_name, value in fields.items():
        kind, _, rest = field_name.partition("|")
        name, _, counter = rest.rpartition("|")
        group = out["keys" if kind == "k" else "models"]
        group.setdefault(name, {})[counter] = int(value)
    return out


class Books(Protocol):
    """Where the counters are kept: the broker's ledger primitive (contract.Broker), or LocalBooks."""

    async def ledger_reserve(
        self, account: str, limits: Limits, tokens: int, nusd: int, *, window: int, days: int
    ) -> Hold | Refusal: ...

    async def ledger_settle(
        self, account: str, hold: Hold, tokens: int, increments: list[tuple[str, int]], *, days: int
    ) -> dict[str, int]: ...

    async def ledger_day(self, day: int) -> dict[str, int]: ...


def _wait(buckets: dict[int, list[int]], index: int, need: int, now: float, window: int) -> int:
    """Seconds until `need` of the window's requests (index 0) or tokens (1) have left it."""
    freed = 0
    for second in sorted(buckets):
        freed += buckets[second][index]
        if freed >= need:
            return max(1, math.ceil(second + window - now))
    return window


class LocalBooks:
    """The ledger primitive in this process, for a broker that is not shared (as the Redis
    backend's Lua scripts do it in one step for every instance)."""

    def __init__(self) -> None:
        self._windows: dict[str, dict[int, list[int]]] = {}  # account -> second -> [requests, tokens]
        self._days: dict[int, dict[str, int]] = {}  # UTC day -> spend counters (see parse_spend)

    async def ledger_reserve(
        self, account: str, limits: Limits, tokens: int, nusd: int, *, window: int, days: int
    ) -> Hold | Refusal:
        now = time.time()
        second, day = int(now), int(now) // DAY
        buckets = self._windows.setdefault(account, {})
        for old in [s for s in buckets if s <= second - window]:
            del buckets[old]
        counters = self._days.setdefault(day, {})
        for old in [d for d in self._days if d <= day - days]:
            del self._days[old]
        if limits.daily_nusd is not None:
            spent = counters.get(f"k|{account}|nusd", 0)
            held = counters.get(f"k|{account}|reserved", 0)
            if spent + held + nusd > limits.daily_nusd:
                # Room may come back when requests in flight settle below their estimates.
                wait = 1 if held > 0 and spent + nusd <= limits.daily_nusd else (day + 1) * DAY - now
                return Refusal("budget", max(1, math.ceil(wait)))
        requests = sum(b[0] for b in buckets.values())
        if limits.rpm is not None and requests + 1 > limits.rpm:
            return Refusal("rpm", _wait(buckets, 0, requests + 1 - limits.rpm, now, window))
        used = sum(b[1] for b in buckets.values())
        if limits.tpm is not None and used + tokens > limits.tpm:
            return Refusal("tpm", _wait(buckets, 1, used + tokens - limits.tpm, now, window))
        bucket = buckets.setdefault(second, [0, 0])
        bucket[0] += 1
        bucket[1] += tokens
        counters[f"k|{account}|reserved"] = counters.get(f"k|{account}|reserved", 0) + nusd
        return Hold(second, day)

    async def ledger_settle(
        self, account: str, hold: Hold, tokens: int, increments: list[tuple[str, int]], *, days: int
    ) -> dict[str, int]:
        bucket = self._windows.get(account, {}).get(hold.second)
        if bucket is not None:
            bucket[1] += tokens
        counters = self._days.setdefault(hold.day, {})
        for name, n in increments:
            counters[name] = counters.get(name, 0) + n
        return dict(counters)

    async def ledger_day(self, day: int) -> dict[str, int]:
        return dict(self._days.get(day, {}))


_local_books: WeakKeyDictionary[Broker, LocalBooks] = WeakKeyDictionary()  # per broker not shared


class Ledger:
    """The accounts' limits and spend, kept by the broker when it is shared, else in this process
    (the same books for every Ledger of one broker)."""

    def __init__(self, broker: Broker) -> None:
        self.books: Books = broker if broker.shared else _local_books.setdefault(broker, LocalBooks())

    async def reserve(
        self, account: str, model: str, limits: Limits, tokens: int, nusd: int
    ) -> Reservation | Refusal:
        """Admit a request estimated at `tokens` and `nusd` when it fits in what `account` has left
        (the day's budget counting what is spent and what admitted requests still hold; requests
        and tokens over the last minute); atomic across every instance sharing the broker."""
        held = await self.books.ledger_reserve(
            account, limits, tokens, nusd, window=LIMIT_WINDOW, days=SPEND_DAYS
        )
        if isinstance(held, Refusal):
            return held
        return Reservation(account, model, tokens, nusd, held.second, held.day)

    async def settle(self, res: Reservation, prompt_tokens: int, completion_tokens: int, nusd: int) -> Spend:
        """Replace a reservation by what the request used; the day's spend after it (parse_spend)."""
        counters = await self.books.ledger_settle(
            res.account,
            Hold(res.second, res.day),
            prompt_tokens + completion_tokens - res.tokens,
            spend_increments(res, prompt_tokens, completion_tokens, nusd),
            days=SPEND_DAYS,
        )
        return parse_spend(counters)

    async def spend(self, day: int | None = None) -> Spend:
        """A UTC day's spend (default: today), as parse_spend gives it."""
        return parse_spend(await self.books.ledger_day(int(time.time()) // DAY if day is None else day))
