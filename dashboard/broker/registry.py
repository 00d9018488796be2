"""Which backend serves a broker URL: by its scheme, among the built-in ones and those packages
register under the entry-point group `dashboard.brokers`."""

from __future__ import annotations

from urllib.parse import urlsplit

from dashboard.broker.contract import Broker, missing_parts
from dashboard.errors import BrokerConfigError
from dashboard.plugins import BROKERS


def backends() -> dict[str, str]:
    """Every installed backend, as URL scheme -> "module:Class": the built-in ones and those that
    packages register under the entry-point group `dashboard.brokers` (named by their scheme)."""
    return {name: plugin.target for name, plugin in BROKERS.plugins().items()}


def backend(scheme: str) -> type[Broker]:
    """The broker class serving URLs of `scheme`; BrokerConfigError when none is installed, or when
    the one installed lacks part of the contract (so the server does not start with it)."""
    target = backends().get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in backends())
        named = f"scheme {scheme}://" if scheme else "URL without a scheme"
        raise BrokerConfigError(f"no broker serves the {named}: use {known}")
    try:
        cls = BROKERS.load_target(target)
    except (ImportError, AttributeError, TypeError) as exc:
        raise BrokerConfigError(f"broker {scheme!r}: {target} does not load: {exc}") from None
    missing = missing_parts(cls)
    if missing:
        shared = "is shared (shared = True) but " if cls.shared else ""
        raise BrokerConfigError(
            f"broker {scheme}:// ({target}) {shared}does not implement {'; '.join(missing)} "
            "(see the contract in dashboard/broker/contract.py)"
        )
    return cls


def is_shared(url: str) -> bool:
    """Whether processes using `url` share events, leases and the ledger (its backend's `shared`)."""
    return backend(urlsplit(url).scheme).shared


def from_url(
    url: str,
    *,
    history: int = 1000,
    prefix: str = "dashboard",
    lease_ttl: float = 5.0,
    min_replicas: int = 0,
) -> Broker:
    """The broker for `url`, by its scheme: `sqlite:///file.db`, `memory://`, `redis://host:port/db`
    (`rediss://` for TLS), `redis+sentinel://host:port[,host:port...]/service/db`, or a backend a
    package registered under `dashboard.brokers`.

    `prefix` and `lease_ttl` concern shared brokers: the first part of their key names, and how
    long a feed's lease outlives an instance that stopped renewing it. `min_replicas` concerns
    Redis only (the config refuses it elsewhere), so it is passed only when set."""
    extra = {"min_replicas": min_replicas} if min_replicas else {}
    cls = backend(urlsplit(url).scheme)
    return cls.from_url(url, history=history, prefix=prefix, lease_ttl=lease_ttl, **extra)
