"""Every scenario, side by side with the peers in the same run, as one table of ratios.

python -m bench.all [--quick]    (--quick: smaller and shorter, for a smoke run)
"""

from __future__ import annotations

import argparse

from bench import churn, fanout, idle, latency
from bench.harness import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer subscribers and shorter runs")
    args = parser.parse_args()
    scale, seconds = (0.2, 3.0) if args.quick else (1.0, 10.0)
    print(f"# sse-dashboard benchmarks\n\nMachine: {machine()}\n")

    subscribers = int(1000 * scale)
    fan = fanout.measure(subscribers, 20.0, seconds)
    print(f"## Fan-out: CPU per delivered event, {subscribers} subscribers x 20 events/s\n")
    print("\n".join(fanout.report(fan)), "\n")

    connections = int(10000 * scale)
    keepalive = round(seconds / 2)  # whole seconds: Nchan's ping interval takes no fraction
    idle_runs = idle.measure(connections, keepalive=keepalive, rounds=1)
    print(f"## Idle: {connections} open streams\n")
    print("\n".join(idle.report(idle_runs, keepalive=keepalive)), "\n")

    print("## Latency: publish to receive, 20 events/s\n")
    print("\n".join(latency.report(latency.measure(seconds))), "\n")

    churned = churn.measure(connections, 200)
    print(f"## Churn: {connections} connects and disconnects\n")
    print("\n".join(churn.report(churned, connections)), "\n")

    ours = fan["sse-dashboard"]
    print("## Headline\n")
    for peer in ("sse-starlette", "nginx-nchan"):
        runs = fan.get(peer)
        if isinstance(runs, list) and isinstance(ours, list):
            ratio = fanout.cpu_per_event(runs) / fanout.cpu_per_event(ours)
            print(f"- CPU per delivered event: {peer} / sse-dashboard = {ratio:.2f}")
        else:
            print(f"- {peer}: {runs}")
    if any(isinstance(runs, list) and any(r.client_limited for r in runs) for runs in fan.values()):
        print("- WARNING: a run was limited by the load client; its numbers understate the server")


if __name__ == "__main__":
    main()
