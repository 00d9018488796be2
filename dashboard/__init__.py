"""sse-dashboard: a real-time dashboard server with pluggable feeds."""

from dashboard.events import Event
from dashboard.feed import Feed

__all__ = ["Event", "Feed", "__version__"]
__version__ = "0.1.0"
