"""The durable embedded broker, `sqlite:///path/to/file.db`: the memory broker, with everything it
keeps also written to one sqlite file (WAL), so that a restart, even after `kill -9`, loses
nothing that was acknowledged.

URLs as SQLAlchemy's: `sqlite:///dashboard.db` is relative to the folder the server starts in,
`sqlite:////var/lib/dashboard/events.db` absolute. One process uses a file at a time (a lock:
a second one is refused, naming the file); `serve --workers N` needs Redis.

- Events: `publish` takes the id and builds the message at once (so ids are in order), queues its
  row in the open batch, and delivers the batch's messages, in id order, once it is committed;
  then it returns. So what a reader sees, a 2xx to /publish and a feed's `await publish` are on
  disk. History is served from memory as the memory broker's (loaded at connect), so reading and
  fan-out cost the same; each topic's rows beyond its `history` are deleted with the next batch.
- The id sequence: the newest id given is kept, so ids keep growing across restarts even when
  the clock steps back, and a browser resuming with its Last-Event-ID continues exactly.
- The ledger primitive's counters (spend per UTC day, one-minute windows, what requests in flight
  hold), claims (expiring by the wall clock) and `keep`'s small state (alert rules).

At connect: topics no longer configured are dropped with their history; what requests in flight
held when the process died without settling them is charged as spent (their cost upstream is
unknown: the budget stays safe), and logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dashboard.broker.contract import MAX_CLAIMS, Hold, Limits, Refusal
from dashboard.broker.memory import MemoryBroker
from dashboard.broker.sqlite import tables
from dashboard.broker.sqlite.store import Store
from dashboard.errors import BrokerConfigError
from dashboard.events import Event, Message

log = logging.getLogger("dashboard.broker.sqlite")


def database_path(url: str) -> Path:
    """The absolute path a `sqlite://` URL names (a relative one from the current folder)."""
    parts = urlsplit(url)
    path = parts.path[1:]
    if parts.netloc or parts.query or not path or path.endswith("/"):
        raise BrokerConfigError(
            f"broker.url {url!r} names no file: use sqlite:///relative/file.db (from the folder the "
            "server starts in) or sqlite:////absolute/file.db"
        )
    return Path(path).absolute()


class SqliteBroker(MemoryBroker):
    """Events, ids, the ledger, claims and kept state in one sqlite file; see the module docs."""

    claim_clock = staticmethod(time.time)  # claims outlive a restart

    @classmethod
    def from_url(cls, url: str, *, history: int, prefix: str, lease_ttl: float) -> SqliteBroker:
        return cls(database_path(url), history=history)

    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.store = Store(path)  # opened and locked now: a file that cannot be used stops the start

    def describe(self) -> str:
        return f"in {self.path} (kept across restarts)"

    @property
    def healthy(self) -> bool:
        return self.store.healthy

    async def connect(self) -> None:
        if not self.store.is_open:
            self.store.open()
        histories = {name: self._history_of(name) for name in self.topics}
        self._restore(self.store.read(partial(tables.load, topics=histories)))

    async def disconnect(self) -> None:
        await super().disconnect()
        self.store.write(tables.SAVE_LAST_ID, (self._last_id,))
        await self.store.close()

    async def topic_added(self, name: str) -> None:
        """A reload added `name`: what the file still holds of it (a topic removed by a reload
        keeps its rows until the next start) is its history again."""
        topics = {name: self._history_of(name)}
        self._restore_histories(self.store.read(partial(tables.load_histories, topics=topics)))

    def _history_of(self, topic: str) -> int:
        return self.topics[topic].history.maxlen or self.default_history

    def _restore(self, saved: tables.Saved) -> None:
        self._last_id = max(self._last_id, saved.last_id)
        self._restore_histories(saved)
        self.books.windows, self.books.days = saved.windows, saved.days
        now = self.claim_clock()
        self._claims = OrderedDict(
            (key, expires) for key, expires in saved.claims[-MAX_CLAIMS:] if expires > now
        )
        self._kept.update(saved.kept)
        charged = self.books.charge_held()
        for account, nusd in charged.items():
            log.warning(
                "account %r: %.6f USD held by requests in flight when the server stopped is counted as spent",
                account,
                nusd / 1e9,
            )
        if charged:
            self._save_days()
            self.store.flush_soon()

    def _restore_histories(self, saved: tables.Saved) -> None:
        for topic, messages in saved.histories.items():
            history = self.topics[topic].history
            history.clear()
            history.extend(messages)
        self._evicted.update(saved.evicted)

    # -- events ------------------------------------------------------------------------------------
    async def publish(self, topic: str, event: Event) -> Message:
        """Store `event` and deliver it once it is on disk. A publisher cancelled meanwhile does
        not take it back: it is stored and delivered all the same."""
        message = self.build(topic, event)
        self.store.write(tables.INSERT_EVENT, (message.id, topic, message.event, message.data, message.ts))
        self.store.then(partial(self.deliver, message))
        await asyncio.shield(self.store.commit())
        return message

    def dropped(self, topic: str, id: int) -> None:
        super().dropped(topic, id)
        self.store.write(tables.TRIM_EVENTS, (topic, id), key=("trim", topic))
        self.store.write(tables.SAVE_EVICTED, (topic, id), key=("evicted", topic))

    # -- claims, the ledger and kept state: the base class's, saved ------------------------------
    async def claim(self, key: str, ttl: float) -> bool:
        if not await super().claim(key, ttl):
            return False
        self.store.write(tables.SAVE_CLAIM, (key, self._claims[key]))
        self.store.write(tables.DROP_EXPIRED_CLAIMS, (self.claim_clock(),), key="expired claims")
        await asyncio.shield(self.store.commit())
        return True

    async def unclaim(self, key: str) -> None:
        await super().unclaim(key)
        self.store.write(tables.DROP_CLAIM, (key,))
        await asyncio.shield(self.store.commit())

    async def ledger_reserve(
        self, account: str, limits: Limits, tokens: int, nusd: int, *, window: int, days: int
    ) -> Hold | Refusal:
        held = await super().ledger_reserve(account, limits, tokens, nusd, window=window, days=days)
        if isinstance(held, Hold):
            await self._save_books(account)
        return held

    async def ledger_settle(
        self, account: str, hold: Hold, tokens: int, increments: list[tuple[str, int]], *, days: int
    ) -> dict[str, int]:
        counters = await super().ledger_settle(account, hold, tokens, increments, days=days)
        await self._save_books(account, settled=hold.day)
        return counters

    async def _save_books(self, account: str, settled: int | None = None) -> None:
        """Write what a ledger step changed and wait for it: the account's window and the days. A
        settlement (`settled`: its day) moves only its day, and the window of an account held to
        limits (one with none has no window). A write that failed goes again with the next (see
        Store.write)."""
        whole = settled is None
        if whole or account in self.books.windows:
            buckets = self.books.windows.get(account, {})
            self.store.write(tables.SAVE_WINDOW, (account, json.dumps(buckets)), key=("window", account))
        if whole:
            self._save_days()
        else:
            counters = self.books.days.get(settled, {})
            self.store.write(tables.SAVE_DAY, (settled, json.dumps(counters)), key=("day", settled))
        await asyncio.shield(self.store.commit())

    def _save_days(self) -> None:
        for day, counters in self.books.days.items():
            self.store.write(tables.SAVE_DAY, (day, json.dumps(counters)), key=("day", day))
        if self.books.days:
            self.store.write(tables.DROP_DAYS_BEFORE, (min(self.books.days),), key="old days")

    def keep(self, key: str, value: str) -> None:
        super().keep(key, value)
        self.store.write(tables.SAVE_KEPT, (key, value), key=("kept", key))
        self.store.flush_soon()
