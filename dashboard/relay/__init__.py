"""The OpenAI-compatible relay: providers with server-side keys, upstream stream parsing, routes."""

from dashboard.relay.errors import RelayError
from dashboard.relay.metrics import Measure
from dashboard.relay.upstream import Chunk, Relay, UpstreamStream

__all__ = ["Chunk", "Measure", "Relay", "RelayError", "UpstreamStream"]
