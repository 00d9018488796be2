"""Admission of new streams: how many this process may hold (its open files), how many one client
may, and the refusals past them (503 overloaded, 429 too_many_streams), with Retry-After."""

from __future__ import annotations

import contextlib
import logging
import resource

from dashboard.errors import HTTPError

log = logging.getLogger("dashboard.sse")

FD_HEADROOM = 100  # open files kept free of streams: Redis, logs, plain requests, the listener
SHED_RETRY_AFTER = 2  # seconds a refused stream is asked to wait (the page backs off on its own)
CLIENT_RETRY_AFTER = 5  # ... when its client holds server.max_streams_per_client already


def open_files_limit() -> int:
    """How many files this process may open (its soft limit): each stream holds a socket."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def raise_open_files_limit() -> None:
    """Raise this process's soft limit on open files to its hard one (the soft default, often 1,024,
    is far below what a server of streams carries). Done where a server process starts (cli)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Admission:
    """Sheds new streams (503 + Retry-After) while this process is saturated: its streams hold
    all the sockets it may open, less a headroom. Says so in the log once per episode. Refuses
    (429 + Retry-After) a client's stream past `per_client` open ones, so that one client cannot
    take every place. Once the server stops (`stopping`), no new stream is opened."""

    def __init__(self, limit: int, per_client: int = 100) -> None:
        self.limit = max(1, limit)
        self.per_client = per_client
        self.open = 0
        self.clients: dict[str, int] = {}  # client address -> its open streams (only those with some)
        self.direct = 0  # of them, streams written straight to their sockets (the fast path)
        self.shedding = False
        self.stopping = False  # the server is shutting down

    def admit(self, client: str) -> None:
        """Count a new stream of `client` in, or raise the refusal; `release` it once it ends."""
        held = self.clients.get(client, 0)
        if held >= self.per_client:
            raise HTTPError(
                429,
                f"this client holds {held} streams, the most one client may (server.max_streams_per_client); "
                f"close one, or retry in {CLIENT_RETRY_AFTER}s",
                "too_many_streams",
                headers={"Retry-After": str(CLIENT_RETRY_AFTER)},
            )
        if self.open >= self.limit:
            if not self.shedding:
                self.shedding = True
                log.warning(
                    "shedding new streams: %d open, the most this process can hold (open files); "
                    "answering 503 with Retry-After until some close",
                    self.open,
                )
            raise HTTPError(
                503,
                f"this server holds {self.open} streams, its most; retry in {SHED_RETRY_AFTER}s",
                "overloaded",
                headers={"Retry-After": str(SHED_RETRY_AFTER)},
            )
        self.open += 1
        self.clients[client] = held + 1

    def release(self, client: str) -> None:
        self.open -= 1
        held = self.clients.pop(client, 0) - 1
        if held > 0:
            self.clients[client] = held
        if self.shedding and self.open < self.limit:
            self.shedding = False
            log.info("accepting new streams again: %d open", self.open)

    def as_json(self) -> dict[str, int | bool]:
        return {
            "open": self.open,
            "limit": self.limit,
            "per_client": self.per_client,
            "shedding": self.shedding,
        }
