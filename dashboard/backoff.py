"""Exponential backoff with full jitter: how long to wait before trying something again."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Backoff:
    """Waits that double from `initial` up to `maximum` seconds, each drawn in [delay/2, delay]."""

    initial: float = 1.0
    maximum: float = 60.0

    def delay(self, attempt: int) -> float:
        """The wait before try number `attempt` + 1 (the first retry is attempt 1)."""
        ceiling = min(self.maximum, self.initial * 2 ** max(0, attempt - 1))
        return random.uniform(ceiling / 2, ceiling)
