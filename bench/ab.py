"""A/B of this checkout against an earlier commit, in the same run: the fan-out and idle scenarios
of the harness on sse-dashboard alone, rounds alternating between the two (which side goes first
turns each round), medians and ranges, and the ratio after/before.

python -m bench.ab --baseline REV [--rounds 3] [--subscribers 1000] [--idle 10000]

The baseline is checked out with `git worktree add --detach` in a temporary folder (removed at the
end) and measured with its own code and its own harness, by the same Python. For the relay, run
`python -m bench.relay --baseline PATH` (both relays asked in turn within each round).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.harness import spread

ROOT = Path(__file__).resolve().parent.parent

# Run inside a checkout (its own bench.harness): one measurement of sse-dashboard, as JSON.
FANOUT = """
import json, sys
from bench.harness import drive, start
target = start("sse-dashboard", rate_hz={rate})
try:
    run = drive(target, {subscribers}, {seconds}, rate_hz={rate})[0]
finally:
    target.stop()
print(json.dumps({{"cpu_us_per_event": run.cpu_us_per_event, "delivered": run.delivered_ratio}}))
"""
IDLE = """
import json
from bench.harness import drive, start
target = start("sse-dashboard", rate_hz=0.0001, keepalive=15.0)
try:
    run = drive(target, {subscribers}, {seconds}, rate_hz=0.0001, warmup=1.0)[0]
finally:
    target.stop()
print(json.dumps({{"kib_per_stream": run.rss_growth / run.subscribers / 1024}}))
"""


def measure(checkout: Path, script: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=checkout, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"measuring {checkout} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the commit (or branch) to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--subscribers", type=int, default=1000, help="fan-out subscribers (default 1000)")
    parser.add_argument("--rate", type=float, default=20.0, help="fan-out events/s (default 20)")
    parser.add_argument("--seconds", type=float, default=10.0, help="fan-out seconds (default 10)")
    parser.add_argument("--idle", type=int, default=10000, help="idle streams (default 10000)")
    args = parser.parse_args()
    scenarios = {
        "fan-out CPU µs/event": (
            FANOUT.format(subscribers=args.subscribers, rate=args.rate, seconds=args.seconds),
            "cpu_us_per_event",
        ),
        "idle KiB/stream": (IDLE.format(subscribers=args.idle, seconds=5), "kib_per_stream"),
    }
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        baseline = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(baseline), args.baseline], cwd=ROOT, check=True
        )
        try:
            sides = {"before": baseline, "after": ROOT}
            figures: dict[str, dict[str, list[float]]] = {
                name: {"before": [], "after": []} for name in scenarios
            }
            for n in range(args.rounds):
                order = ["before", "after"] if n % 2 == 0 else ["after", "before"]
                for name, (script, key) in scenarios.items():
                    for side in order:
                        figures[name][side].append(measure(sides[side], script)[key])
                print(f"round {n + 1} of {args.rounds} done", file=sys.stderr)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, check=False)
    print(
        f"A/B against {args.baseline}: {args.rounds} alternating rounds; load average {load[0]:.2f} at start"
    )
    print("| measure | before | after | after/before (medians) |")
    print("|---|---|---|---|")
    for name, sides_figures in figures.items():
        before, after = sides_figures["before"], sides_figures["after"]
        ratio = statistics.median(after) / statistics.median(before)
        print(f"| {name} | {spread(before)} | {spread(after)} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
