"""Which providers serve a model: each provider's `models` are fnmatch patterns of model names, and
a request goes to the providers whose patterns match, in the configured order (which `ai.routing`
may change per request: Relay.in_order)."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from dashboard.config import AIProvider


def serves(provider: AIProvider, model: str) -> bool:
    """Whether one of the provider's model patterns matches `model`."""
    return any(fnmatchcase(model, pattern) for pattern in provider.models)


def serving(providers: Iterable[AIProvider], model: str) -> list[AIProvider]:
    """The providers whose model patterns match `model`, in the configured order."""
    return [p for p in providers if serves(p, model)]
