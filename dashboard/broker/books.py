"""The ledger primitive's terms (`Limits`, `Hold`, `Refusal`) and `LocalBooks`, which keeps its
counters in this process: what `Broker.ledger_reserve`, `ledger_settle` and `ledger_day` do unless
a backend keeps them itself (the Redis backend does the same arithmetic in Lua, scripts.py)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

DAY = 86400  # seconds in a UTC day; days are numbered from the epoch


@dataclass(frozen=True)
class Limits:
    """What one account may use: requests and tokens per minute, nano-dollars per UTC day (None:
    no limit)."""

    rpm: int | None = None
    tpm: int | None = None
    daily_nusd: int | None = None


@dataclass(frozen=True)
class Hold:
    """Where the ledger primitive counted an admitted request: its window bucket (Unix seconds)
    and the UTC day (days since the epoch) its estimate is held against."""

    second: int
    day: int


@dataclass(frozen=True)
class Refusal:
    """Why a request was not admitted (`rpm`, `tpm` or `budget`) and when to try again."""

    reason: str
    retry_after: int  # seconds


def _wait(buckets: dict[int, list[int]], index: int, need: int, now: float, window: int) -> int:
    """Seconds until `need` of the window's requests (index 0) or tokens (1) have left it."""
    freed = 0
    for second in sorted(buckets):
        freed += buckets[second][index]
        if freed >= need:
            return max(1, math.ceil(second + window - now))
    return window


class LocalBooks:
    """The ledger primitive's counters in this process, each step done at once (see
    `Broker.ledger_reserve` for what the steps mean). A durable backend saves `windows` and `days`
    after each step and loads them back when it starts."""

    def __init__(self) -> None:
        self.windows: dict[str, dict[int, list[int]]] = {}  # account -> second -> [requests, tokens]
        self.days: dict[int, dict[str, int]] = {}  # UTC day -> counters (`k|<account>|nusd`, ...)

    def reserve(
        self, account: str, limits: Limits, tokens: int, nusd: int, *, window: int, days: int
    ) -> Hold | Refusal:
        now = time.time()
        second, day = int(now), int(now) // DAY
        buckets = self.windows.setdefault(account, {})
        for old in [s for s in buckets if s <= second - window]:
            del buckets[old]
        counters = self.days.setdefault(day, {})
        for old in [d for d in self.days if d <= day - days]:
            del self.days[old]
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

    def settle(
        self, account: str, hold: Hold, tokens: int, increments: list[tuple[str, int]]
    ) -> dict[str, int]:
        bucket = self.windows.get(account, {}).get(hold.second)
        if bucket is not None:
            bucket[1] += tokens
        counters = self.days.setdefault(hold.day, {})
        for name, n in increments:
            counters[name] = counters.get(name, 0) + n
        return dict(counters)

    def day(self, day: int) -> dict[str, int]:
        return dict(self.days.get(day, {}))

    def charge_held(self) -> dict[str, int]:
        """Count what is still held (`k|<account>|reserved`) as spent (`k|<account>|nusd`): what a
        process that stopped without settling its requests in flight left; per account, how much.
        The budgets stay safe: those requests may have been charged upstream."""
        charged: dict[str, int] = {}
        for counters in self.days.values():
            for name, held in list(counters.items()):
                kind, _, rest = name.partition("|")
                account, _, counter = rest.rpartition("|")
                if kind == "k" and counter == "reserved" and held:
                    counters[f"k|{account}|nusd"] = counters.get(f"k|{account}|nusd", 0) + held
                    counters[name] = 0
                    charged[account] = charged.get(account, 0) + held
        return charged
