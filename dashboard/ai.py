"""The AI relay as a feed uses it: `self.context.relay.open_stream(body, Measure(model=...))`."""

from dashboard.relay import Chunk, Measure, Relay, RelayError, UpstreamStream
from dashboard.relay.keys import NO_KEY, PAGE, Account, Keys, Ticket
from dashboard.relay.metrics import ttft_totals
from dashboard.relay.routing import serving

__all__ = [
    "NO_KEY",
    "PAGE",
    "Account",
    "Chunk",
    "Keys",
    "Measure",
    "Relay",
    "RelayError",
    "Ticket",
    "UpstreamStream",
    "serving",
    "ttft_totals",
]
