"""sse-dashboard: a real-time dashboard server with pluggable feeds."""

from dashboard import hotpath

hotpath.choose()  # before any import of the hot path

# ruff: noqa: E402 (after the choice above)
from dashboard.events import Event
from dashboard.feed import Feed

__all__ = ["Event", "Feed", "__version__"]
__version__ = "0.1.0"
