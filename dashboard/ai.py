"""The AI relay as a feed uses it: `self.context.completions.admit(account, body, Measure(model=...))`,
then the completion streamed inside `async with completion:` (see dashboard.relay.lifecycle)."""

from dashboard.relay import Chunk, Measure, Relay, RelayError, UpstreamStream
from dashboard.relay.keys import NO_KEY, PAGE, Account, Keys, Ticket
from dashboard.relay.lifecycle import Completion, Completions
from dashboard.relay.metrics import ttft_totals
from dashboard.relay.routing import serving

__all__ = [
    "NO_KEY",
    "PAGE",
    "Account",
    "Chunk",
    "Completion",
    "Completions",
    "Keys",
    "Measure",
    "Relay",
    "RelayError",
    "Ticket",
    "UpstreamStream",
    "serving",
    "ttft_totals",
]
