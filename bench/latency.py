"""Latency: publish-to-receive time at 100 and 2,000 subscribers x 20 events/s, against the peers.

python -m bench.latency [--seconds 10]
"""

from __future__ import annotations

import argparse

from bench.harness import TARGETS, drive, each_target, machine

SCENARIOS = ((100, 20.0), (2000, 20.0))


def measure(seconds: float) -> list[tuple[int, dict[str, object]]]:
    out = []
    for subscribers, rate in SCENARIOS:

        def body(target, subscribers=subscribers, rate=rate):
            return drive(target, subscribers, seconds, rate_hz=rate, sample=200)[0]

        out.append((subscribers, each_target(TARGETS, body, rate_hz=rate)))
    return out


def report(measured: list[tuple[int, dict[str, object]]]) -> list[str]:
    lines = ["| subscribers | target | p50 ms | p99 ms | max ms | delivered |", "|---|---|---|---|---|---|"]
    for subscribers, results in measured:
        for name, run in results.items():
            if isinstance(run, str):
                lines.append(f"| {subscribers} | {name} | {run} | | | |")
                continue
            lines.append(
                f"| {subscribers} | {name} | {run.percentile(50):.2f} | {run.percentile(99):.2f} | "
                f"{run.percentile(100):.2f} | {run.delivered_ratio:.1%} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(f"latency: publish to receive, {args.seconds:g}s per run; {machine()}")
    for line in report(measure(args.seconds)):
        print(line)


if __name__ == "__main__":
    main()
