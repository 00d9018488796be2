"""The broker: stores each topic's recent events and hands them to subscribers' sinks.

- contract.py: `Broker`, what every backend must do (and a shared one more), written once.
- fanout.py: the local fan-out every backend shares: topics, `Subscription`s and their `Sink`s
  (the web layer's SSE streams), replay with no gap and no duplicate.
- books.py: the ledger primitive's terms and its counters kept in one process (`LocalBooks`).
- leases.py: `Lease` and the `fence` a feed publishes under.
- registry.py: the backend for a URL, by its scheme (`from_url`).
- one module or package per backend: memory.py (nothing on disk), sqlite/ (the default: the
  memory broker with everything it keeps written to one file, durably), redis/ (shared).
"""

from __future__ import annotations

from dashboard.broker.contract import (
    MAX_CLAIMS,
    SHARED_PARTS,
    Broker,
    Hold,
    Limits,
    Refusal,
    check_requested_id,
    missing_parts,
)
from dashboard.broker.fanout import RATE_WINDOW, Fanout, Sink, Subscription, TopicState
from dashboard.broker.leases import Lease, fence
from dashboard.broker.registry import backend, backends, from_url, is_shared

__all__ = [
    "MAX_CLAIMS",
    "RATE_WINDOW",
    "SHARED_PARTS",
    "Broker",
    "Fanout",
    "Hold",
    "Lease",
    "Limits",
    "Refusal",
    "Sink",
    "Subscription",
    "TopicState",
    "backend",
    "backends",
    "check_requested_id",
    "fence",
    "from_url",
    "is_shared",
    "missing_parts",
]
