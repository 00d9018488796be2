"""What the sqlite broker's file holds: its tables, the statements that write them, and what is
read back when the broker connects.

- `events`: each topic's history, its newest `history` rows (the rest are deleted with the next
  batch after they leave the ring in memory; a topic no longer configured at start, all of them);
  `evicted`: per topic, the newest id deleted so, which tells a resuming reader it lost events;
  `meta`: `last_id`, the newest id given.
- `windows` and `days`: the ledger primitive's counters (dashboard/broker/books.py) as JSON, one
  row per account's one-minute window and per UTC day kept.
- `claims`: key -> when it expires (Unix seconds); `kept`: the small state of `Broker.keep`.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field

from dashboard.events import Message

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY, topic TEXT NOT NULL, event TEXT NOT NULL, data TEXT NOT NULL, ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_topic ON events (topic, id);
CREATE TABLE IF NOT EXISTS evicted (topic TEXT PRIMARY KEY, id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS windows (account TEXT PRIMARY KEY, buckets TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS days (day INTEGER PRIMARY KEY, counters TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS kept (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

INSERT_EVENT = "INSERT INTO events (id, topic, event, data, ts) VALUES (?, ?, ?, ?, ?)"
TRIM_EVENTS = "DELETE FROM events WHERE topic = ? AND id <= ?"
SAVE_EVICTED = "INSERT OR REPLACE INTO evicted (topic, id) VALUES (?, ?)"
SAVE_LAST_ID = "INSERT OR REPLACE INTO meta (name, value) VALUES ('last_id', ?)"
SAVE_WINDOW = "INSERT OR REPLACE INTO windows (account, buckets) VALUES (?, ?)"
SAVE_DAY = "INSERT OR REPLACE INTO days (day, counters) VALUES (?, ?)"
DROP_DAYS_BEFORE = "DELETE FROM days WHERE day < ?"
SAVE_CLAIM = "INSERT OR REPLACE INTO claims (key, expires) VALUES (?, ?)"
DROP_CLAIM = "DELETE FROM claims WHERE key = ?"
DROP_EXPIRED_CLAIMS = "DELETE FROM claims WHERE expires <= ?"
SAVE_KEPT = "INSERT OR REPLACE INTO kept (key, value) VALUES (?, ?)"


@dataclass
class Saved:
    """What the file held when the broker connected."""

    last_id: int = 0
    histories: dict[str, list[Message]] = field(default_factory=dict)  # oldest first
    evicted: dict[str, int] = field(default_factory=dict)
    windows: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    days: dict[int, dict[str, int]] = field(default_factory=dict)
    claims: list[tuple[str, float]] = field(default_factory=list)  # by expiry, unexpired only
    kept: dict[str, str] = field(default_factory=dict)


def load(db: sqlite3.Connection, topics: dict[str, int]) -> Saved:
    """Everything the file holds for a broker with `topics` (name -> history), once it has
    dropped the topics no longer configured, the events beyond each topic's history and expired
    claims (in one transaction)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        newest = db.execute("SELECT max(id) FROM events").fetchone()[0] or 0
        stored = db.execute("SELECT value FROM meta WHERE name = 'last_id'").fetchone()
        saved = Saved(last_id=max(newest, stored[0] if stored else 0))
        db.execute(SAVE_LAST_ID, (saved.last_id,))  # before a dropped topic takes the newest id along
        names = list(topics)
        marks = ", ".join("?" * len(names))
        # A topic no longer configured loses its events; its newest id is kept as evicted, so that
        # a reader resuming on it, should it come back, is told what it lost.
        db.execute(
            f"INSERT OR REPLACE INTO evicted (topic, id) SELECT topic, max(id) FROM events "
            f"WHERE topic NOT IN ({marks}) GROUP BY topic",
            names,
        )
        db.execute(f"DELETE FROM events WHERE topic NOT IN ({marks})", names)
        db.execute(DROP_EXPIRED_CLAIMS, (time.time(),))
        load_histories(db, topics, saved)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    for account, buckets in db.execute("SELECT account, buckets FROM windows"):
        saved.windows[account] = {int(second): counts for second, counts in json.loads(buckets).items()}
    for day, counters in db.execute("SELECT day, counters FROM days"):
        saved.days[day] = json.loads(counters)
    saved.claims = db.execute("SELECT key, expires FROM claims ORDER BY expires").fetchall()
    saved.kept = dict(db.execute("SELECT key, value FROM kept"))
    return saved


def load_histories(db: sqlite3.Connection, topics: dict[str, int], saved: Saved | None = None) -> Saved:
    """Each topic's newest `history` events into `saved`, with the newest id evicted before them;
    older rows are deleted."""
    saved = Saved() if saved is None else saved
    for topic, history in topics.items():
        rows = db.execute(
            "SELECT id, event, data, ts FROM events WHERE topic = ? ORDER BY id DESC LIMIT ?",
            (topic, history + 1),
        ).fetchall()
        found = db.execute("SELECT id FROM evicted WHERE topic = ?", (topic,)).fetchone()
        evicted = found[0] if found else 0
        if len(rows) > history:
            evicted = max(evicted, rows[history][0])
            db.execute(TRIM_EVENTS, (topic, evicted))
            db.execute(SAVE_EVICTED, (topic, evicted))
        saved.histories[topic] = [
            Message.build(id, topic, event, data, ts) for id, event, data, ts in reversed(rows[:history])
        ]
        if evicted:
            saved.evicted[topic] = evicted
    return saved
