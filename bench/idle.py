"""Idle connections: resident memory per open stream and CPU spent while nothing happens.

python -m bench.idle [--subscribers 10000] [--seconds 5]
"""

from __future__ import annotations

import argparse

from bench.harness import TARGETS, drive, each_target, machine


def measure(subscribers: int, seconds: float) -> dict[str, object]:
    # Heartbeats every 15 s; the window is shorter, so any CPU in it is per-connection waste.
    def body(target):
        return drive(target, subscribers, seconds, rate_hz=0.0001, warmup=1.0)[0]

    return each_target(TARGETS, body, rate_hz=0.0001, keepalive=15.0)


def report(results: dict[str, object]) -> list[str]:
    lines = [
        "| target | connections | RSS growth per connection | server CPU while idle |",
        "|---|---|---|---|",
    ]
    for name, run in results.items():
        if isinstance(run, str):
            lines.append(f"| {name} | {run} | | |")
            continue
        lines.append(
            f"| {name} | {run.subscribers} | {run.rss_growth / run.subscribers / 1024:.1f} KiB | "
            f"{run.server_cpu * 1000:.1f} ms over {run.seconds:g} s |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=10000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(f"idle: {args.subscribers} open streams, {args.seconds:g}s between heartbeats; {machine()}")
    for line in report(measure(args.subscribers, args.seconds)):
        print(line)


if __name__ == "__main__":
    main()
