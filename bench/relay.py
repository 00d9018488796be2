"""Relay benchmark: the same streams read directly from an upstream and through the relay.

    python -m bench.relay [--pairs 400] [--streams 200] [--write-results]

Runs a lean OpenAI-compatible upstream (own process), `dashboard serve` with a provider on it
(own process), and a raw-socket client here. Reports the time to first token and the gaps between
chunks, direct versus relayed: what the relay adds (p50, p99), and with 200 concurrent streams,
whether any chunk gap stretched beyond twice the upstream's.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHUNK = (
    'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"bench",'
    '"choices":[{"index":0,"delta":{"content":"tok%d "},"finish_reason":null}]}\n\n'
)
FINISH = (
    'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"bench",'
    '"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
)

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


# -- the upstream (run as `python -m bench.relay --upstream PORTFILE`) --------------------------------
async def upstream_main(portfile: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:  # keep-alive: one request after another on the connection
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
                body = json.loads(await reader.readexactly(length))
                _, n, gap_ms = body["model"].split("-")  # bench-<chunks>-<gap ms>
                writer.write(HEAD)
                for i in range(int(n)):
                    if i:
                        await asyncio.sleep(int(gap_ms) / 1000)
                    data = (CHUNK % i).encode()
                    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                data = FINISH.encode()
                writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    Path(portfile).write_text(str(server.sockets[0].getsockname()[1]))
    async with server:
        await server.serve_forever()


# -- the client ------------------------------------------------------------------------------------
async def one_stream(port: int, path: str, chunks: int, gap_ms: int) -> tuple[float, list[float]]:
    """(time to first chunk, gaps between chunks) in seconds, for one streamed completion."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = json.dumps(
        {"model": f"bench-{chunks}-{gap_ms}", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    ).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body
    arrivals: list[float] = []
    tail = b""
    started = time.perf_counter()
    writer.write(request)
    try:
        while len(arrivals) < chunks:
            data = await reader.read(65536)
            if not data:
                break
            now = time.perf_counter()
            seen = (tail + data).count(b'"content":"tok')
            arrivals.extend([now] * seen)
            tail = data[-16:]
    finally:
        writer.close()
    if len(arrivals) < chunks:
        raise RuntimeError(f"{path}: {len(arrivals)} of {chunks} chunks arrived")
    return arrivals[0] - started, [b - a for a, b in itertools.pairwise(arrivals)]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


async def sequential(up: int, relay: int, pairs: int, chunks: int, gap_ms: int) -> dict:
    direct_ttft, relay_ttft, direct_gaps, relay_gaps = [], [], [], []
    for i in range(pairs + 20):
        d = await one_stream(up, "/v1/chat/completions", chunks, gap_ms)
        r = await one_stream(relay, "/v1/chat/completions", chunks, gap_ms)
        if i < 20:
            continue  # warm-up: connection pools, caches
        direct_ttft.append(d[0])
        relay_ttft.append(r[0])
        direct_gaps.extend(d[1])
        relay_gaps.extend(r[1])
    return {
        "ttft": {p: (pct(direct_ttft, p), pct(relay_ttft, p)) for p in (50, 99)},
        "gap": {p: (pct(direct_gaps, p), pct(relay_gaps, p)) for p in (50, 99)},
        "samples": (len(relay_ttft), len(relay_gaps)),
    }


async def concurrent(port: int, streams: int, chunks: int, gap_ms: int) -> dict:
    path = "/v1/chat/completions"
    results = await asyncio.gather(*(one_stream(port, path, chunks, gap_ms) for _ in range(streams)))
    gaps = [g for _, gs in results for g in gs]
    limit = 2 * gap_ms / 1000
    return {
        "max_gap": max(gaps),
        "p99_gap": pct(gaps, 99),
        "p50_gap": pct(gaps, 50),
        "over_2x": sum(g > limit for g in gaps),
        "gaps": len(gaps),
        "p99_ttft": pct([t for t, _ in results], 99),
    }


# -- orchestration ---------------------------------------------------------------------------------
def start_upstream(tmp: Path) -> tuple[subprocess.Popen, int]:
    portfile = tmp / "upstream.port"
    proc = subprocess.Popen([sys.executable, __file__, "--upstream", str(portfile)])
    for _ in range(200):
        if portfile.exists() and portfile.read_text():
            return proc, int(portfile.read_text())
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the bench upstream did not start")


def start_relay(tmp: Path, upstream_port: int) -> tuple[subprocess.Popen, int]:
    config = tmp / "config.yaml"
    config.write_text(
        "ai:\n  providers:\n"
        f"    - {{name: bench, base_url: 'http://127.0.0.1:{upstream_port}/v1', models: ['bench-*'],"
        " include_usage: false, timeouts: {first_token: 30, idle: 30, total: 120}}\n"
        "topics: {}\n"
    )
    log = (tmp / "relay.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dashboard", "serve", "--config", str(config), "--port", "0"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    for _ in range(300):
        text = (tmp / "relay.log").read_text(errors="replace")
        match = re.search(r"serving on http://\S+:(\d+)", text)
        if match:
            return proc, int(match.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"the relay did not start:\n{text}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the relay did not start")


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "load": load,
    }


async def run(args: argparse.Namespace, up: int, relay: int) -> dict:
    seq = await sequential(up, relay, args.pairs, chunks=6, gap_ms=5)
    direct = await concurrent(up, args.streams, chunks=args.chunks, gap_ms=args.gap)
    relayed = await concurrent(relay, args.streams, chunks=args.chunks, gap_ms=args.gap)
    return {"seq": seq, "direct": direct, "relayed": relayed}


def report(results: dict, args: argparse.Namespace, info: dict, load_before: tuple) -> str:
    seq, direct, relayed = results["seq"], results["direct"], results["relayed"]
    lines = [
        f"Machine: {info['nproc']} CPUs, {info['cpu']}, Python {info['python']}; "
        f"load average before/after: {load_before[0]:.2f} / {info['load'][0]:.2f}",
        "",
        f"Sequential, {seq['samples'][0]} request pairs (direct then relayed, alternating), "
        f"6 chunks 5 ms apart:",
        "",
        "| measure | direct | relayed | added by the relay | ratio |",
        "|---|---|---|---|---|",
    ]
    for name, key in (("time to first token", "ttft"), ("inter-chunk gap", "gap")):
        for p in (50, 99):
            d, r = seq[key][p]
            lines.append(f"| {name} p{p} | {ms(d)} | {ms(r)} | {ms(r - d)} | {r / d:.2f}x |")
    limit = 2 * args.gap
    lines += [
        "",
        f"{args.streams} concurrent streams, {args.chunks} chunks {args.gap} ms apart (limit: no gap over "
        f"{limit} ms):",
        "",
        "| | p50 gap | p99 gap | max gap | gaps over 2x | p99 time to first token |",
        "|---|---|---|---|---|---|",
    ]
    for name, res in (("direct", direct), ("relayed", relayed)):
        lines.append(
            f"| {name} | {ms(res['p50_gap'])} | {ms(res['p99_gap'])} | {ms(res['max_gap'])} | "
            f"{res['over_2x']} of {res['gaps']} | {ms(res['p99_ttft'])} |"
        )
    lines += [
        "",
        f"Ratios: relayed/direct p99 gap {relayed['p99_gap'] / direct['p99_gap']:.2f}x, "
        f"max gap {relayed['max_gap'] / (args.gap / 1000):.2f}x the upstream's {args.gap} ms.",
    ]
    return "\n".join(lines)


def write_results(text: str) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    existing = path.read_text() if path.exists() else "# Benchmark results\n"
    section = f"## Relay\n\nCommand: `python -m bench.relay`, {time.strftime('%Y-%m-%d')}.\n\n{text}\n"
    pattern = re.compile(r"## Relay\n.*?(?=\n## |\Z)", re.S)
    existing = (
        pattern.sub(lambda _: section.rstrip("\n"), existing)
        if pattern.search(existing)
        else (existing.rstrip("\n") + "\n\n" + section)
    )
    path.write_text(existing.rstrip("\n") + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", metavar="PORTFILE", help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=int, default=400, help="sequential request pairs (default 400)")
    parser.add_argument("--streams", type=int, default=200, help="concurrent streams (default 200)")
    parser.add_argument("--chunks", type=int, default=50, help="chunks per concurrent stream (default 50)")
    parser.add_argument("--gap", type=int, default=20, help="upstream gap between chunks, ms (default 20)")
    parser.add_argument("--write-results", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        uvloop = None
    runner = uvloop.run if uvloop else asyncio.run
    if args.upstream:
        runner(upstream_main(args.upstream))
        return 0

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        up_proc, up_port = start_upstream(tmp)
        relay_proc = None
        try:
            relay_proc, relay_port = start_relay(tmp, up_port)
            results = runner(run(args, up_port, relay_port))
        finally:
            for proc in (relay_proc, up_proc):
                if proc is not None:
                    proc.terminate()
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    text = report(results, args, machine(), load_before)
    print(text)
    if args.write_results:
        write_results(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
