"""The Redis broker behind Redis Sentinel: `redis+sentinel://h1:26379,h2:26379/service/db`.

Every connection asks the sentinels where the primary of `service` is when it opens, and a
connection that finds the old primary gone or demoted fails like any lost connection. So the
RedisBroker's own outage handling (the reader's reconnect, 503 `broker_unavailable` while no
primary answers, leases taken back by renewal) follows a promotion with nothing added here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from dashboard.broker.redis import RedisBroker
from dashboard.errors import BrokerConfigError

SENTINEL_PORT = 26379
SENTINEL_TIMEOUT = 1.0  # seconds to wait for one sentinel before asking the next


@dataclass(frozen=True)
class SentinelURL:
    """What a `redis+sentinel://` URL names: the sentinels, the service, the database, the
    credentials of the Redis servers (sentinels are asked without them) and whether to use TLS."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None
    tls: bool

    @property
    def where(self) -> str:
        """For messages: never the password."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"{self.service} via sentinels {hosts} (db {self.db})"


def parse_sentinel_url(url: str) -> SentinelURL:
    """The parts of `[redis|rediss]+sentinel://[user:password@]host:port[,host:port...]/service[/db]`;
    BrokerConfigError naming what is wrong."""
    parts = urlsplit(url)
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    sentinels = [_host_port(item, url) for item in hosts.split(",") if item]
    service, _, db = parts.path.strip("/").partition("/")
    if not sentinels or not service:
        raise BrokerConfigError(
            f"broker URL {_hidden(url)!r} must name the sentinels and the service: "
            "redis+sentinel://host:port[,host:port...]/service/db"
        )
    if db and not db.isdigit():
        raise BrokerConfigError(f"broker URL {_hidden(url)!r}: the database must be a number, got {db!r}")
    return SentinelURL(
        sentinels=sentinels,
        service=unquote(service),
        db=int(db or 0),
        username=unquote(username) or None,
        password=unquote(password) or None,
        tls=parts.scheme.startswith("rediss"),
    )


def _host_port(item: str, url: str) -> tuple[str, int]:
    host, colon, port = item.rpartition(":")
    if not colon or host.endswith(":"):  # no port, or an IPv6 address without brackets
        host, port = item, str(SENTINEL_PORT)
    if not port.isdigit():
        raise BrokerConfigError(f"broker URL {_hidden(url)!r}: {item!r} is not host:port")
    return host.strip("[]"), int(port)


def _hidden(url: str) -> str:
    credentials, at, _ = url.partition("://")[2].rpartition("@")
    return url if not at else url.replace(credentials + "@", "***@", 1)


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """A sentinel pool that makes a caller wait for a free connection rather than fail."""


class SentinelRedisBroker(RedisBroker):
    """The Redis broker, its primary found through Redis Sentinel (see the module docs)."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.target = parse_sentinel_url(url)
        tls = {"ssl": True} if self.target.tls else {}
        self.sentinel = Sentinel(
            self.target.sentinels,
            sentinel_kwargs={
                "socket_connect_timeout": SENTINEL_TIMEOUT,
                "socket_timeout": SENTINEL_TIMEOUT,
                **tls,
            },
            db=self.target.db,
            username=self.target.username,
            password=self.target.password,
            **tls,
        )

    @staticmethod
    def location(url: str) -> str:
        return parse_sentinel_url(url).where

    def _connect_client(
        self,
        socket_timeout: float,
        pool: type[aioredis.ConnectionPool] = aioredis.ConnectionPool,
        **limits: Any,
    ) -> aioredis.Redis:
        # As for redis://, no retries: a publish retried after a lost reply could store its event twice.
        blocking = issubclass(pool, aioredis.BlockingConnectionPool)
        return self.sentinel.master_for(
            self.target.service,
            connection_pool_class=_BlockingSentinelPool if blocking else SentinelConnectionPool,
            socket_connect_timeout=2.0,
            socket_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
            **limits,
        )

    async def disconnect(self) -> None:
        await super().disconnect()
        with contextlib.suppress(RedisError, OSError):
            await self.sentinel.aclose()
