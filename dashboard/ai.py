"""The AI relay as a feed uses it: `self.context.relay.open_stream(body, Measure(model=...))`."""

from dashboard.relay import Chunk, Measure, Relay, RelayError, UpstreamStream

__all__ = ["Chunk", "Measure", "Relay", "RelayError", "UpstreamStream"]
