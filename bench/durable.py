"""The durable broker's cost: fan-out with sqlite:// against memory://, side by side in one run,
rounds alternating (which goes first turns each round); medians and ranges of server CPU per
delivered event, and the ratio sqlite/memory.

python -m bench.durable [--rounds 3] [--subscribers 1000] [--rate 1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from bench.harness import drive, machine, spread, start

BROKERS = ("memory://", "sqlite")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s published (default 1000)")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    load = os.getloadavg()
    cpu: dict[str, list[float]] = {b: [] for b in BROKERS}
    delivered: dict[str, list[float]] = {b: [] for b in BROKERS}
    for n in range(args.rounds):
        for broker in BROKERS if n % 2 == 0 else reversed(BROKERS):
            target = start("sse-dashboard", rate_hz=args.rate, broker=broker)
            try:
                run = drive(target, args.subscribers, args.seconds, rate_hz=args.rate)[0]
            finally:
                target.stop()
            cpu[broker].append(run.cpu_us_per_event)
            delivered[broker].append(run.delivered_ratio * 100)
        print(f"round {n + 1} of {args.rounds} done", file=sys.stderr)
    ratio = statistics.median(cpu["sqlite"]) / statistics.median(cpu["memory://"])
    print(f"{machine()}; load average {load[0]:.2f} at start, {os.getloadavg()[0]:.2f} at the end")
    print(
        f"{args.subscribers} subscribers x {args.rate:g} events/s for {args.seconds:g} s, "
        f"{args.rounds} alternating rounds: medians (range)"
    )
    print("| broker | delivered | server CPU µs per delivered event | vs memory:// |")
    print("|---|---|---|---|")
    for broker in BROKERS:
        versus = statistics.median(cpu[broker]) / statistics.median(cpu["memory://"])
        print(f"| {broker} | {spread(delivered[broker], '%')} | {spread(cpu[broker])} | {versus:.2f}x |")
    print(f"sqlite/memory = {ratio:.2f}x (target: at most 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
