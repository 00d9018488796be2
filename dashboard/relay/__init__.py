"""The AI relay: providers with server-side keys in the OpenAI or Anthropic dialect, upstream stream
parsing, routes for clients of either dialect."""

from dashboard.relay.dialects import Chunk
from dashboard.relay.errors import RelayError
from dashboard.relay.metrics import Measure
from dashboard.relay.upstream import Relay, UpstreamStream

__all__ = ["Chunk", "Measure", "Relay", "RelayError", "UpstreamStream"]
