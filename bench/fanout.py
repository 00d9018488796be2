"""Fan-out: CPU per delivered event at N subscribers x R events/s on one topic, against the peers.

python -m bench.fanout [--subscribers 1000] [--rate 20] [--seconds 10]
"""

from __future__ import annotations

import argparse

from bench.harness import TARGETS, Run, drive, each_target, machine

__all__ = ["Run", "measure", "report"]


def measure(subscribers: int, rate: float, seconds: float) -> dict[str, object]:
    return each_target(TARGETS, lambda t: drive(t, subscribers, seconds, rate_hz=rate)[0], rate_hz=rate)


def report(results: dict[str, object]) -> list[str]:
    ours = results["sse-dashboard"]
    lines = [
        "| target | delivered | server CPU µs/event | ratio vs sse-dashboard | p50 ms | p99 ms "
        "| client CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in results.items():
        if isinstance(run, str):
            lines.append(f"| {name} | {run} | | | | | |")
            continue
        ratio = run.cpu_us_per_event / ours.cpu_us_per_event
        flag = " (client-limited!)" if run.client_limited else ""
        lines.append(
            f"| {name} | {run.delivered_ratio:.1%} | {run.cpu_us_per_event:.2f} | {ratio:.2f}x | "
            f"{run.percentile(50):.1f} | {run.percentile(99):.1f} | "
            f"{max(run.client_cpu) / run.seconds:.0%} max of a core{flag} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(f"fan-out: {args.subscribers} subscribers x {args.rate:g} events/s, {args.seconds:g}s; {machine()}")
    for line in report(measure(args.subscribers, args.rate, args.seconds)):
        print(line)


if __name__ == "__main__":
    main()
