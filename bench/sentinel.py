"""Redis Sentinel: what `broker.min_replicas: 1` costs and what it saves, side by side in one run.

    python -m bench.sentinel [--rounds 3]

Each round starts a primary, two replicas and three sentinels on loopback (Debian's redis-server),
publishes without pause for two seconds, kills the primary, and publishes on through the failover,
with one live reader and 50 readers resuming across it (tests/sentinels.py, as the tests run it).
Rounds alternate `min_replicas` 0 and 1 (which goes first turns each round). Reported, as medians
with their range: the publish latency before the kill (p50, p99) and its ratio 1 to 0, the time from
the kill until publishing resumed, and events acknowledged against those the new primary holds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.harness import machine, spread
from tests.sentinels import SentinelSet, failover_under_load, present_ids

MODES = (0, 1)


def one_round(min_replicas: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-sentinel-") as workdir:
        group = SentinelSet(Path(workdir))
        try:
            group.start()
            run = asyncio.run(failover_under_load(group, min_replicas))
            present = set(present_ids(group))
        finally:
            group.stop()
    latencies = run["latencies"]
    acked = run["acked"]
    return {
        "p50": latencies[len(latencies) // 2] * 1000,
        "p99": latencies[int(len(latencies) * 0.99)] * 1000,
        "failover": run["failover"],
        "acked": len(acked),
        "lost": len(set(acked) - present),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        print("redis-server is not installed (apt-get install -y redis-server)", file=sys.stderr)
        return 1
    load = os.getloadavg()
    runs: dict[int, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for n in range(args.rounds):
        for mode in MODES if n % 2 == 0 else reversed(MODES):
            runs[mode].append(one_round(mode))
        print(f"round {n + 1} of {args.rounds} done", file=sys.stderr)
    print(f"{machine()}; load average {load[0]:.2f} at start, {os.getloadavg()[0]:.2f} at the end")
    print(f"{args.rounds} alternating rounds, down-after 1 s: medians (range)")
    print("| min_replicas | publish p50 ms | publish p99 ms | failover s | acknowledged | lost |")
    print("|---|---|---|---|---|---|")
    for mode in MODES:
        rows = runs[mode]
        cells = [spread([r[k] for r in rows]) for k in ("p50", "p99", "failover")]
        cells += [spread([r[k] for r in rows], digits=0) for k in ("acked", "lost")]
        print(f"| {mode} | " + " | ".join(cells) + " |")
    ratio = statistics.median(r["p50"] for r in runs[1]) / statistics.median(r["p50"] for r in runs[0])
    print(f"publish latency p50, min_replicas 1 against 0: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
