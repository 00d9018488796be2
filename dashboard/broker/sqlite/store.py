"""The sqlite broker's file: opened once per process (a lock keeps others out), written in
batches, one transaction per batch (a group commit).

Writes queue in the open batch; whoever must know they are on disk awaits `commit()`, and the
batch is written at the end of this loop tick, so whatever a busy server publishes in one tick
shares a transaction. The writes themselves are inline (a small transaction costs tens of
microseconds; handing each to a thread costs more, and under load waits for the GIL); what can
take milliseconds, a checkpoint (copying the write-ahead log into the file, with an fsync), runs
on a thread of its own every CHECKPOINT_EVERY transactions, while batches wait and grow.

With WAL and `synchronous=NORMAL`, a commit survives the process being killed (`kill -9`), not
a power cut, which may take the last transactions (never the file).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import sqlite3
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dashboard.broker.sqlite.tables import SCHEMA, SCHEMA_VERSION
from dashboard.errors import BrokerUnavailable, StorageError

log = logging.getLogger("dashboard.broker.sqlite")

CHECKPOINT_EVERY = 256  # transactions between checkpoints: the log stays within a few MB

Statement = tuple[str, Sequence[Any]]


class Batch:
    """Writes that go to disk in one transaction, and what to do once they are there."""

    def __init__(self) -> None:
        self.statements: dict[Hashable, Statement] = {}
        self.then: list[Callable[[], None]] = []  # run in order once committed, before `done`
        self.done: asyncio.Future[None] | None = None  # made when someone waits for it
        self.urgent = False  # written at the end of this tick; else with the next urgent batch


class Store:
    """One database file, locked against other processes, written in batches."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.healthy = True
        self._lock_fd: int | None = None
        self._db: sqlite3.Connection | None = None
        self._checkpointer: sqlite3.Connection | None = None  # used on the thread alone
        self._thread: ThreadPoolExecutor | None = None
        self._open = Batch()
        self._numbers = itertools.count()
        self._scheduled = False  # the open batch is to be written at the end of this tick
        self._checkpointing: asyncio.Future[Any] | None = None
        self._since_checkpoint = 0
        self.open()

    # -- opening and closing ----------------------------------------------------------------------
    def open(self) -> None:
        """Lock the file and open it (created when missing); StorageError naming it and saying
        what to do when it cannot be used."""
        try:
            self._lock_fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(
                f"cannot open {self.path}: {exc.strerror}; does its folder exist, and may this user "
                "write there? (broker.url sqlite:///relative/file.db or sqlite:////absolute/file.db)"
            ) from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._unlock()
            raise StorageError(
                f"{self.path} is in use by another process (another `dashboard serve`?): one file "
                "serves one process; give each server its own file, or share events through redis://"
            ) from None
        try:
            self._db = _connect(self.path)
            self._checkpointer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            self._close_connections()
            self._unlock()
            raise StorageError(_explain(self.path, exc)) from None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint")

    def _close_connections(self) -> None:
        for db in (self._db, self._checkpointer):
            if db is not None:
                db.close()
        self._db = self._checkpointer = None

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # after sqlite closed the file: closing drops its locks too
            self._lock_fd = None

    @property
    def is_open(self) -> bool:
        return self._db is not None

    async def close(self) -> None:
        """Write what is queued, then close the file and let another process have it."""
        if self._db is None:
            return
        with contextlib.suppress(BrokerUnavailable):
            await self.commit()
        if self._checkpointing is not None:
            await asyncio.wait([self._checkpointing])
        self._close_connections()  # the last connection to close checkpoints and removes the log
        self._unlock()
        if self._thread is not None:
            self._thread.shutdown()

    def read(self, reader: Callable[[sqlite3.Connection], Any]) -> Any:
        """`reader(connection)`: for what is read at start-up; StorageError when it fails."""
        assert self._db is not None, "the sqlite store is closed"
        try:
            return reader(self._db)
        except sqlite3.Error as exc:
            raise StorageError(_explain(self.path, exc)) from None

    # -- writing --------------------------------------------------------------------------------
    def write(self, sql: str, params: Sequence[Any], *, key: Hashable | None = None) -> None:
        """Queue a statement in the open batch; a later one with the same `key` replaces it. It is
        written with the next batch that is committed or flushed. A keyed statement saves a state
        (its newest snapshot, or an idempotent trim): when its batch fails, it goes again with the
        next one, so that the file catches up once a write succeeds. (A key is never an int: those
        number the statements written without one.)"""
        self._open.statements[next(self._numbers) if key is None else key] = (sql, params)

    def then(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the open batch is committed (callbacks run in the order given)."""
        self._open.then.append(callback)

    def commit(self) -> asyncio.Future[None]:
        """The open batch's commit: done once it is on disk (BrokerUnavailable when it cannot be)."""
        batch = self._open
        if batch.done is None:
            batch.done = asyncio.get_running_loop().create_future()
        self.flush_soon()
        return batch.done

    def flush_soon(self) -> None:
        """Write the open batch at the end of this loop tick, without waiting for it."""
        self._open.urgent = True
        if not self._scheduled and self._checkpointing is None:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._open = self._open, Batch()
        try:
            if self._db is None:
                raise sqlite3.OperationalError("the database is closed")
            _transaction(self._db, batch.statements.values())
        except (sqlite3.Error, OSError) as exc:
            self.healthy = False
            # The keyed statements go again with the next batch, where anything newer of the same
            # key written since replaces them.
            again = {key: st for key, st in batch.statements.items() if not isinstance(key, int)}
            again.update(self._open.statements)
            self._open.statements = again
            if batch.done is not None:
                batch.done.set_exception(BrokerUnavailable(f"cannot write {self.path}: {exc}"))
                batch.done.exception()  # retrieved: its waiters may all have left
            return
        self.healthy = True
        for callback in batch.then:
            try:
                callback()
            except Exception:  # one failing callback must not keep the others waiting
                log.exception("after writing %s", self.path)
        if batch.done is not None:
            batch.done.set_result(None)
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY:
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Copy the log into the file on the thread; batches wait (and grow) meanwhile, so the
        log starts again from its beginning afterwards instead of growing."""
        self._since_checkpoint = 0
        loop = asyncio.get_running_loop()
        self._checkpointing = loop.run_in_executor(self._thread, _checkpoint, self._checkpointer)
        self._checkpointing.add_done_callback(self._checkpointed)

    def _checkpointed(self, done: asyncio.Future[Any]) -> None:
        self._checkpointing = None
        if done.exception() is not None:
            log.warning("checkpoint of %s failed: %s", self.path, done.exception())
        if self._open.urgent:
            self.flush_soon()


def _checkpoint(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()


def _connect(path: Path) -> sqlite3.Connection:
    """The connection, in WAL mode, checked and with the schema in place."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA busy_timeout = 0")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"it was written by a newer version (schema {version})")
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("database disk image is malformed")
        if db.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
            raise sqlite3.OperationalError("unable to use write-ahead logging in its folder")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA wal_autocheckpoint = 0")  # checkpoints run on the thread (Store._checkpoint)
        db.executescript(f"BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
    except BaseException:
        db.close()
        raise
    return db


def _transaction(db: sqlite3.Connection, statements: Any) -> None:
    """Run `statements` in one transaction; runs of one statement go through executemany."""
    db.execute("BEGIN")
    try:
        for sql, run in itertools.groupby(statements, key=lambda statement: statement[0]):
            db.executemany(sql, [params for _, params in run])
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _explain(path: Path, exc: sqlite3.Error) -> str:
    """What is wrong with the file at `path`, and what to do, from sqlite's error."""
    reason = str(exc)
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return (
            f"{path} is not a dashboard database, or it is damaged ({reason}); move it away to start "
            "afresh (history, spend and alert states are then lost), or restore a copy"
        )
    return f"cannot use {path}: {reason}; may this user write the file and its folder?"
