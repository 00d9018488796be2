"""Admission of new streams: how many this process may hold (its open files), how many one client
may, and the refusals past them (503 overloaded, 429 too_many_streams), with Retry-After.

Past the open files limit itself (connections that are not streams yet), uvloop's accept drops a
new connection at once and keeps listening, without a log line; admission keeps FD_HEADROOM files
free so that a new stream is answered 503 long before that."""

from __future__ import annotations

import contextlib
import logging
import resource

from dashboard.errors import HTTPError

log = logging.getLogger("dashboard.sse")

FD_HEADROOM = 100  # open files kept free of streams: Redis, logs, plain requests, the listener
MORE_FILES = "ulimit -n before it starts; systemd's LimitNOFILE; docker's --ulimit nofile"
SHED_RETRY_AFTER = 2  # seconds a refused stream is asked to wait (the page backs off on its own)
CLIENT_RETRY_AFTER = 5  # ... when its client holds server.max_streams_per_client already


def open_files_limit() -> int:
    """How many files this process may open (its soft limit): each stream holds a socket."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def raise_open_files_limit() -> None:
    """Raise this process's soft limit on open files to its hard one (the soft default, often 1,024,
    is far below what a server of streams carries). Done where a server process starts (serving);
    workers inherit it. The hard limit is the system's to raise, not the server's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def stream_capacity() -> int:
    """How many streams this process can hold at once: its open files, less the headroom."""
    return max(1, open_files_limit() - FD_HEADROOM)


def describe_capacity() -> str:
    """The startup line on streams: how many this process can hold, from what, and how to hold more."""
    return (
        f"up to {stream_capacity()} open at once per process (open files limit {open_files_limit()}, "
        f"{FD_HEADROOM} kept for feeds, the broker, upstreams and logs); more: raise the limit "
        f"({MORE_FILES})"
    )


class Admission:
    """Sheds new streams (503 + Retry-After) while this process is saturated: its streams hold
    all the sockets it may open, less a headroom. Says so in the log once per episode. Refuses
    (429 + Retry-After) a client's stream past `per_client` open ones, so that one client cannot
    take every place. Once the server stops (`stopping`), no new stream is opened."""

    def __init__(self, limit: int, per_client: int = 100) -> None:
        self.limit = max(1, limit)  # stream_capacity() in a server
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
                f"this server holds {self.open} streams, its most (open files limit "
                f"{self.limit + FD_HEADROOM}, less {FD_HEADROOM} kept for other work); retry in "
                f"{SHED_RETRY_AFTER}s. To hold more, raise the server's open files limit ({MORE_FILES}) "
                "or add instances (README: Scale out)",
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
