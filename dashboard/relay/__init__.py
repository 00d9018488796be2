"""The AI relay: providers with server-side keys in the OpenAI or Anthropic dialect, upstream stream
parsing, api keys' accounting, and the one lifecycle every completion runs (admission, streaming,
settlement, measurement, logging). No HTTP server code: the /v1 routes are in dashboard/web/relay.py."""

from dashboard.relay.dialects import Chunk
from dashboard.relay.errors import RelayError
from dashboard.relay.metrics import Measure
from dashboard.relay.stream import UpstreamStream
from dashboard.relay.upstream import Relay

__all__ = ["Chunk", "Measure", "Relay", "RelayError", "UpstreamStream"]
