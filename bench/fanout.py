"""Fan-out: CPU per delivered event at N subscribers x R events/s on one topic, against the peers,
rounds alternating (medians and ranges when more than one).

python -m bench.fanout [--subscribers 1000] [--rate 20] [--seconds 10] [--rounds 1] [--targets a,b]

Past what one process's open files allow, it says so and measures the most it can (bench/capacity.py).
"""

from __future__ import annotations

import argparse
import statistics

from bench.capacity import plan
from bench.harness import TARGETS, Run, alternating, drive, machine, spread

__all__ = ["Run", "measure", "report"]


def measure(
    subscribers: int, rate: float, seconds: float, rounds: int = 1, targets: tuple[str, ...] = TARGETS
) -> dict[str, list[Run] | str]:
    def body(target):
        return drive(target, subscribers, seconds, rate_hz=rate)[0]

    return alternating(targets, rounds, body, rate_hz=rate)


def cpu_per_event(runs: list[Run]) -> float:
    """The median over rounds of the server's CPU per delivered event, µs."""
    return statistics.median(run.cpu_us_per_event for run in runs)


def report(results: dict[str, list[Run] | str]) -> list[str]:
    ours = results["sse-dashboard"]
    lines = [
        "| target | delivered | server CPU µs/event | ratio vs sse-dashboard | p50 ms | p99 ms "
        "| client CPU | load average |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        if isinstance(runs, str):
            lines.append(f"| {name} | {runs} |" + " |" * 7)
            continue
        ratio = cpu_per_event(runs) / cpu_per_event(ours) if isinstance(ours, list) else float("nan")
        flag = " (client-limited!)" if any(run.client_limited for run in runs) else ""
        lines.append(
            f"| {name} | {spread([run.delivered_ratio * 100 for run in runs], '%', 1)} | "
            f"{spread([run.cpu_us_per_event for run in runs])} | {ratio:.2f}x | "
            f"{spread([run.percentile(50) for run in runs], digits=1)} | "
            f"{spread([run.percentile(99) for run in runs], digits=1)} | "
            f"{max(max(run.client_cpu) / run.seconds for run in runs):.0%} max of a core{flag} | "
            f"{', '.join(f'{run.load:.2f}' for run in runs)} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated")
    args = parser.parse_args()
    checked = plan(args.subscribers)
    for note in checked.notes:
        print(note)
    print(
        f"fan-out: {checked.streams} subscribers x {args.rate:g} events/s, {args.seconds:g}s, "
        f"{args.rounds} round(s); {machine()}"
    )
    results = measure(checked.streams, args.rate, args.seconds, args.rounds, tuple(args.targets.split(",")))
    for line in report(results):
        print(line)


if __name__ == "__main__":
    main()
