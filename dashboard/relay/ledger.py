"""The ledger: what api keys' limits mean, and the books of what each key and model spends.

An account is held to requests and tokens per minute (a sliding window of one-second buckets) and
to nano-dollars per UTC day, counting what it spent and what its admitted requests still hold. A
request is admitted with an estimate (`reserve`), which is replaced by what it used (`settle`).

The counters are kept by the broker's ledger primitive (dashboard/broker/contract.py): one atomic
step per admission, for every instance sharing a Redis; in this process otherwise (and saved in
its file by the sqlite broker).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dashboard.broker import Broker, Hold, Limits, Refusal
from dashboard.broker.books import DAY

__all__ = ["DAY", "NANO", "Ledger", "Limits", "Refusal", "Reservation"]

LIMIT_WINDOW = 60  # seconds of the sliding window of rpm and tpm (in one-second buckets)
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


class Ledger:
    """The accounts' limits and spend, in the broker's books (the same for every Ledger of one
    broker, and for every instance sharing it)."""

    def __init__(self, broker: Broker) -> None:
        self.books = broker

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

    async def settle(
        self, res: Reservation, prompt_tokens: int, completion_tokens: int, nusd: int, spend: bool = True
    ) -> Spend | None:
        """Replace a reservation by what the request used; the day's spend after it (parse_spend),
        or None when it is not wanted (`spend` false: most settlements have no spend feed to tell)."""
        counters = await self.books.ledger_settle(
            res.account,
            Hold(res.second, res.day),
            prompt_tokens + completion_tokens - res.tokens,
            spend_increments(res, prompt_tokens, completion_tokens, nusd),
            days=SPEND_DAYS,
        )
        return parse_spend(counters) if spend else None

    async def spend(self, day: int | None = None) -> Spend:
        """A UTC day's spend (default: today), as parse_spend gives it."""
        return parse_spend(await self.books.ledger_day(int(time.time()) // DAY if day is None else day))
