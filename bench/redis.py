"""Scale out: two workers sharing Redis versus one process with the memory broker.

    python -m bench.redis [--clients 40] [--seconds 8] [--redis redis://127.0.0.1:6379/0]
    python -m bench.redis --storm 10000 [--rounds 3]

Starts real `dashboard serve` processes on loopback with one clock feed, connects SSE clients
(raw sockets, so that the client costs little), and measures deliveries per second and the p99
latency from the feed's timestamp to a client reading the event. With two workers the feed runs
in one of them: the clients that reached the other one measure the trip across instances through
Redis. Prints both and their ratios, and appends them to bench/RESULTS.md under "Scale out".

`--storm N` measures a reconnect storm instead: N streams opened at once across two instances
sharing Redis, half resuming with a Last-Event-ID from history, against N on one memory process;
the time until every stream has its first event, refusals, resumers that did not continue at their
id, and feed restarts; rounds alternate between the two setups.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # not bench/: this file would shadow the `redis` package

EPOCH = re.compile(rb'"epoch":([0-9.]+)')
URL_LINE = re.compile(r"serving on (http://\S+)")

CONFIG = """
broker: {{url: "{url}", prefix: "{prefix}"}}
server: {{max_backlog: 100000, max_streams_per_client: 1000000}}
topics:
  clock: {{feed: demo, options: {{mode: clock, interval: {interval}}}}}
"""


def start_server(
    url: str, workers: int, interval: float, tmp: Path, prefix: str = ""
) -> tuple[subprocess.Popen, str, str]:
    prefix = prefix or f"bench-{uuid.uuid4().hex[:8]}"
    config = tmp / f"{prefix}.yaml"
    config.write_text(CONFIG.format(url=url, prefix=prefix, interval=interval))
    log = (tmp / f"{prefix}-{uuid.uuid4().hex[:4]}.log").open("w+")
    cmd = [sys.executable, "-m", "dashboard", "serve", "--config", str(config), "--port", "0"]
    cmd += ["--workers", str(workers), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        log.seek(0)
        match = URL_LINE.search(log.read())
        if match:
            return proc, match.group(1), prefix
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    log.seek(0)
    raise SystemExit(f"server did not start:\n{log.read()}")


async def client(host: str, port: int, stop: float, latencies: list[float], counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /sse/clock?replay=0 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    received = 0
    try:
        while (left := stop - time.time()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            if not chunk:
                break
            now = time.time()
            stamps = EPOCH.findall(chunk)
            received += len(stamps)
            latencies.extend(now - float(s) for s in stamps)
    finally:
        counts.append(received)
        writer.close()


async def measure(url: str, clients: int, seconds: float, warmup: float = 2.0) -> dict[str, float]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    latencies: list[float] = []
    counts: list[int] = []
    stop = time.time() + warmup + seconds
    tasks = [asyncio.create_task(client(host, int(port), stop, latencies, counts)) for _ in range(clients)]
    await asyncio.sleep(warmup)
    latencies.clear()  # count only the measured window
    await asyncio.gather(*tasks)
    latencies.sort()
    delivered = len(latencies)
    p99 = latencies[int(delivered * 0.99) - 1] if delivered else float("nan")
    p50 = latencies[delivered // 2] if delivered else float("nan")
    return {"deliveries_per_s": delivered / seconds, "p50_ms": p50 * 1000, "p99_ms": p99 * 1000}


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def delete_prefix(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return (
        f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {load[0]:.1f} at start"
    )


def storm_round(url: str, instances: int, streams: int, interval: float, tmp: Path) -> dict[str, float]:
    """One storm: `streams` opened at once across `instances` servers, half resuming."""
    import httpx

    from tests.support import open_streams, read_events

    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    servers = [start_server(url, 1, interval, tmp, prefix) for _ in range(instances)]
    urls = [served for _, served, _ in servers]
    try:
        with httpx.Client(base_url=urls[0], timeout=30) as client:
            known = [int(e.id) for e in read_events(client, "/sse/clock", 30, timeout=60)]
        requests, expected = [], {}
        for i in range(streams):
            if i % 4 < 2:
                k = i % (len(known) - 1)
                requests.append((urls[i % instances], "/sse/clock", known[k]))
                expected[i] = known[k + 1]
            else:
                requests.append((urls[i % instances], "/sse/clock?replay=0", None))
        starts, took = asyncio.run(open_streams(requests, timeout=120))
        restarts = 0
        for served in urls:
            with httpx.Client(base_url=served, timeout=30) as client:
                restarts += client.get("/api/topics").json()["topics"]["clock"]["status"]["restarts"]
    finally:
        for proc, _, _ in servers:
            stop_server(proc)
        if url != "memory://":
            delete_prefix(url, prefix)
    return {
        "live_s": took,
        "refused": sum(s.status not in (200, 0) for s in starts),
        "unanswered": sum(s.status == 0 for s in starts),
        "resumed_wrong": sum(starts[i].first_id != want for i, want in expected.items()),
        "restarts": restarts,
    }


def storm(args: argparse.Namespace) -> int:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.storm + 1000)), hard))
    interval = args.interval or 0.1
    setups = (("redis, 2 instances", args.redis, 2), ("memory, 1 process", "memory://", 1))
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in setups}
    where = machine()
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):
            for name, url, instances in setups:  # alternating: one of each per round
                r = storm_round(url, instances, args.storm, interval, Path(tmp))
                rounds[name].append(r)
                print(
                    f"round {n + 1} {name:<19} all live in {r['live_s']:5.2f} s  refused {r['refused']:.0f}  "
                    f"unanswered {r['unanswered']:.0f}   resumed wrong {r['resumed_wrong']:.0f}   "
                    f"feed restarts {r['restarts']:.0f}",
                    flush=True,
                )
    lines = [
        f"\n### {time.strftime('%Y-%m-%d %H:%M')}: storm of {args.storm} streams at once, half resuming, "
        f"feed every {interval * 1000:g} ms, {args.rounds} alternating rounds\n",
        f"Machine: {where}.{' ' + args.note if args.note else ''}\n\n",
        "| setup | all live, s: median (min-max) | refused | unanswered | resumed wrong | feed restarts |\n",
        "|---|---:|---:|---:|---:|---:|\n",
    ]
    for name, results in rounds.items():
        live = [r["live_s"] for r in results]
        total = {
            k: sum(r[k] for r in results) for k in ("refused", "unanswered", "resumed_wrong", "restarts")
        }
        summary = f"{statistics.median(live):.2f} ({min(live):.2f}-{max(live):.2f})"
        print(f"{name:<19} all live in {summary} s over {len(live)} rounds; totals {total}")
        lines.append(
            f"| {name} | {summary} | {total['refused']:.0f} | {total['unanswered']:.0f} | "
            f"{total['resumed_wrong']:.0f} | {total['restarts']:.0f} |\n"
        )
    append_results(lines)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--interval", type=float, default=None, help="seconds between feed events (0.002; storm: 0.1)"
    )
    parser.add_argument("--storm", type=int, default=0, help="measure a storm of this many streams")
    parser.add_argument("--rounds", type=int, default=3, help="storm rounds per setup (median, spread)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--note", default="", help="said next to the results (e.g. 'busy machine')")
    args = parser.parse_args()
    if args.storm:
        return storm(args)
    args.interval = args.interval or 0.002

    where = machine()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, url, workers in (
            ("memory, 1 process", "memory://", 1),
            ("redis, 2 workers", args.redis, 2),
        ):
            proc, served, prefix = start_server(url, workers, args.interval, Path(tmp))
            try:
                results[name] = asyncio.run(measure(served, args.clients, args.seconds))
            finally:
                stop_server(proc)
                if url != "memory://":
                    delete_prefix(url, prefix)
            r = results[name]
            print(
                f"{name:<18} {r['deliveries_per_s']:>10.0f} deliveries/s   "
                f"p50 {r['p50_ms']:6.1f} ms   p99 {r['p99_ms']:6.1f} ms"
            )
    mem, red = results["memory, 1 process"], results["redis, 2 workers"]
    ratio_rate = red["deliveries_per_s"] / mem["deliveries_per_s"]
    ratio_p99 = red["p99_ms"] / mem["p99_ms"]
    print(f"ratio redis/memory: deliveries {ratio_rate:.2f}x, p99 latency {ratio_p99:.2f}x")

    lines = [
        f"\n### {time.strftime('%Y-%m-%d %H:%M')}: {args.clients} clients, feed every "
        f"{args.interval * 1000:g} ms, {args.seconds:g} s measured\n",
        f"Machine: {where}.{' ' + args.note if args.note else ''}\n\n",
        "| setup | deliveries/s | p50 ms | p99 ms |\n|---|---:|---:|---:|\n",
        *(
            f"| {n} | {r['deliveries_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |\n"
            for n, r in results.items()
        ),
        f"\nRatio redis/memory: deliveries {ratio_rate:.2f}x, p99 latency {ratio_p99:.2f}x.\n",
    ]
    append_results(lines)
    return 0


def append_results(lines: list[str]) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if "\n## Scale out\n" not in text:
        text += (
            "\n## Scale out\n\n`python -m bench.redis`: one process with memory:// versus two workers "
            "sharing Redis (the feed runs in one worker; clients of the other receive through Redis).\n"
            "The offered load is fixed (feed rate x clients), so deliveries/s shows whether a setup keeps "
            "up, not its ceiling; latency runs from the demo feed's `epoch` (millisecond resolution) "
            "to the client's read.\n"
        )
    # Newest results go at the end of the "Scale out" section.
    head, _, tail = text.partition("\n## Scale out\n")
    section, sep, rest = tail.partition("\n## ")
    text = (
        head + "\n## Scale out\n" + section.rstrip("\n") + "\n" + "".join(lines) + (sep + rest if sep else "")
    )
    path.write_text(text)
    print(f"appended to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    raise SystemExit(main())
