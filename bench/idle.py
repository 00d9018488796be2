"""Idle streams at scale: resident memory per open stream, keepalives on schedule, and one event
to every stream, sse-dashboard against nginx + Nchan, rounds alternating.

python -m bench.idle [--subscribers 100000] [--rounds 3] [--keepalive 15] [--targets a,b]

Each round opens the streams, lets them idle for two keepalive periods and more (each stream's
gaps between keepalives give their lateness), then POSTs one timestamped event and times its
arrival on every stream. It checks first what the machine allows (bench/capacity.py) and says
when one process cannot hold that many, measuring the most it can instead.
"""

from __future__ import annotations

import argparse
import time

from bench.capacity import plan
from bench.harness import Run, alternating, drive, machine, spread

TARGETS = ("sse-dashboard", "nginx-nchan")  # sse-starlette may be named: it has no event to all
DELIVERY_WAIT = 5.0  # seconds the event has to reach every stream (the target is 2)


def measure(
    subscribers: int, keepalive: float = 15.0, rounds: int = 3, targets: tuple[str, ...] = TARGETS
) -> dict[str, list[Run] | str]:
    def body(target):
        idle_cpu = []

        def during() -> None:
            cpu0 = target.cpu_seconds()
            time.sleep(2 * keepalive + 5)  # at least two keepalives on every stream: one gap each
            idle_cpu.append(target.cpu_seconds() - cpu0)
            if target.publish_path:  # sse-starlette's peer has none
                target.publish()
                time.sleep(DELIVERY_WAIT)

        run = drive(target, subscribers, 0, rate_hz=0.0001, warmup=1.0, sample=subscribers, during=during)[0]
        run.server_cpu = idle_cpu[0]  # while idle: keepalives only
        return run

    return alternating(targets, rounds, body, rate_hz=0.0001, keepalive=keepalive)


def lateness(run: Run, keepalive: float) -> tuple[float, float]:
    """How late an idle stream's keepalives came, in seconds past a period after the one before:
    p99 and max."""
    late = sorted(gap - keepalive for gap in run.gaps) or [float("nan")]
    return late[int(0.99 * (len(late) - 1))], late[-1]


def report(results: dict[str, list[Run] | str], keepalive: float = 15.0) -> list[str]:
    lines = [
        "| target | streams open | RSS per stream | keepalive late, p99 | late, max | event to all: "
        "delivered | p50 ms | p99 ms | max ms | server CPU while idle | load average |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        if isinstance(runs, str):
            lines.append(f"| {name} | {runs} |" + " |" * 10)
            continue
        late = [lateness(run, keepalive) for run in runs]
        cells = [
            spread([run.subscribers - run.failed for run in runs], digits=0),
            spread([run.rss_growth / run.subscribers / 1024 for run in runs], " KiB", 1),
            spread([p99 for p99, _ in late], " s"),
            spread([most for _, most in late], " s"),
            spread([len(run.latencies) for run in runs], digits=0),
            spread([run.percentile(50) for run in runs], digits=0),
            spread([run.percentile(99) for run in runs], digits=0),
            spread([run.percentile(100) for run in runs], digits=0),
            spread([run.server_cpu * 1000 for run in runs], " ms", 0),
            ", ".join(f"{run.load:.2f}" for run in runs),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=100000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keepalive", type=int, default=15, help="whole seconds between keepalives")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated")
    args = parser.parse_args()
    checked = plan(args.subscribers)
    for note in checked.notes:
        print(note)
    print(
        f"idle: {checked.streams} open streams, keepalive every {args.keepalive:g} s, then one event to all; "
        f"{args.rounds} alternating rounds, medians (range); {machine()}"
    )
    results = measure(checked.streams, args.keepalive, args.rounds, tuple(args.targets.split(",")))
    for line in report(results, args.keepalive):
        print(line)


if __name__ == "__main__":
    main()
