"""Churn: memory after 10,000 stream connects and disconnects, against the server's baseline.

python -m bench.churn [--connections 10000] [--concurrency 200]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.harness import each_target, machine

TARGETS = ("sse-dashboard", "sse-starlette")


async def churn(port: int, path: str, connections: int, concurrency: int) -> float:
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await reader.read(4096)  # the response has started
            writer.close()
            await writer.wait_closed()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(connections)))
    return time.perf_counter() - started


def measure(connections: int, concurrency: int) -> dict[str, object]:
    def body(target):
        # Warm up once so that imports and caches are part of the baseline, not of the growth.
        asyncio.run(churn(target.port, target.path, 500, concurrency))
        time.sleep(1.0)
        baseline = target.rss()
        elapsed = asyncio.run(churn(target.port, target.path, connections, concurrency))
        time.sleep(2.0)  # let disconnects be noticed and buffers be freed
        return baseline, target.rss(), elapsed

    return each_target(TARGETS, body, rate_hz=20.0)


def report(results: dict[str, object], connections: int) -> list[str]:
    lines = ["| target | baseline RSS | after churn | growth | connects/s |", "|---|---|---|---|---|"]
    for name, result in results.items():
        if isinstance(result, str):
            lines.append(f"| {name} | {result} | | | |")
            continue
        baseline, after, elapsed = result
        lines.append(
            f"| {name} | {baseline / 2**20:.1f} MiB | {after / 2**20:.1f} MiB | "
            f"{(after - baseline) / 2**20:+.1f} MiB | {connections / elapsed:.0f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()
    print(f"churn: {args.connections} connects and disconnects; {machine()}")
    for line in report(measure(args.connections, args.concurrency), args.connections):
        print(line)


if __name__ == "__main__":
    main()
