"""How long a token lives, as `dashboard token --ttl` takes it."""

from __future__ import annotations

import re


def parse_ttl(text: str) -> int:
    """`90`, `30s`, `15m`, `8h`, `7d` -> seconds; ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"not a duration: {text!r} (write 90s, 15m, 8h or 7d)")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
