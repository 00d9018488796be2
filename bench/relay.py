"""Relay benchmark: the same streams read directly from an upstream and through the relay.

    python -m bench.relay [--pairs 400] [--streams 200,500] [--rounds 3] [--litellm PATH] [--write-results]

Runs a lean OpenAI-compatible upstream (own process), `dashboard serve` with a provider on it
(own process), LiteLLM's proxy on it too when its `litellm` command is found (`--litellm`, else
beside this Python, else on PATH), and a raw-socket client here.
`python-pipe` is the floor of any relay written in Python on this machine: a bare TCP pipe on
uvloop (own process) that copies bytes both ways and knows nothing of HTTP, keys or limits.
Reports the time to first token and the gaps between chunks, direct versus through each relay: what
a relay adds (p50, p99) to requests asked one at a time, each read to its end and followed by a short
pause so that no target is still finishing one while the next is measured; and with 200 and 500
concurrent streams, how many chunk gaps stretched beyond twice the upstream's and the CPU each target
spent per chunk. Two routing scenarios put a second upstream first in the relays' lists: one that
fails every request (503), from which they must fall back to the healthy one, and one that sends its
first chunk 300 ms late, with least-busy routing (the relays in processes of their own, as that
setting is for all models), reporting the share of the streams it served. Direct and the pipe go
straight to the healthy upstream: the floor. Each target is also given as a ratio to the pipe, and
the issue's targets are checked against those ratios at the end. Every figure is the median of the
rounds, with its range.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
CHUNK = (
    'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"bench",'
    '"choices":[{"index":0,"delta":{"content":"tok%d "},"finish_reason":null}]}\n\n'
)
FINISH = (
    'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"bench",'
    '"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
)

# Sent by the client to every target: LiteLLM's proxy refuses to start without a master key; the
# upstream and sse-dashboard (no api tokens configured) ignore it.
BENCH_KEY = "sk-bench-" + "0123456789abcdef" * 4
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


# -- the upstream (run as `python -m bench.relay --upstream PORTFILE`) --------------------------------
FAILED = b'{"error":{"message":"overloaded","type":"server_error","code":null}}'
SLOWED_FIRST = 0.3  # seconds the slowed upstream waits before its first chunk


async def upstream_main(portfile: str, kind: str = "healthy") -> None:
    """The upstream. `kind`: healthy; failing, it answers every request 503 at once (a provider that
    is down); slowed, it sends its first chunk SLOWED_FIRST late, then streams as the healthy one (a
    provider under load). A GET is answered with the number of completions it was asked for so far."""
    asked = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal asked
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:  # keep-alive: one request after another on the connection
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"GET "):
                    count = b"%d" % asked
                    writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n%s" % count)
                    break
                asked += 1
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
                body = json.loads(await reader.readexactly(length))
                if kind == "failing":
                    writer.write(
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\n\r\n%s" % (len(FAILED), FAILED)
                    )
                    continue
                # bench-<chunks>-<gap ms> (route-, slow-...; LiteLLM's wildcard deployments send the numbers)
                n, gap_ms = body["model"].split("-")[-2:]
                writer.write(HEAD)
                if kind == "slowed":
                    await asyncio.sleep(SLOWED_FIRST)
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


# -- the floor (run as `python -m bench.relay --pipe PORTFILE:UPSTREAM_PORT`) -------------------------
class _Pipe(asyncio.Protocol):
    """One side of a piped connection: what it receives goes to the other side."""

    def __init__(self, peer: _Pipe | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []  # the client's bytes before the upstream connection is up

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.peer is not None:  # the upstream side: the client's first bytes go out now
            self.peer.peer = self
            transport.writelines(self.peer.early)

    def data_received(self, data: bytes) -> None:
        if self.peer is None or self.peer.transport is None:
            self.early.append(data)
        else:
            self.peer.transport.write(data)

    def connection_lost(self, exc) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def pipe_main(spec: str) -> None:
    portfile, _, port = spec.rpartition(":")
    loop = asyncio.get_running_loop()
    connecting: set[asyncio.Task] = set()

    def accepted() -> _Pipe:
        client = _Pipe()
        task = loop.create_task(loop.create_connection(lambda: _Pipe(client), "127.0.0.1", int(port)))
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return client

    server = await loop.create_server(accepted, "127.0.0.1", 0, backlog=1024)
    Path(portfile).write_text(str(server.sockets[0].getsockname()[1]))
    async with server:
        await server.serve_forever()


async def bare_asgi_main(portfile: str) -> None:
    """uvicorn (uvloop, httptools) serving a bare ASGI app that answers a completion request with one
    token chunk and nothing else: what uvicorn itself costs a request (bench.instructions)."""
    import uvicorn

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        head = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": b'data: {"delta":{"content":"tok0"}}\n\n'})

    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, http="httptools", lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    Path(portfile).write_text(str(server.servers[0].sockets[0].getsockname()[1]))
    await serving


# -- the client ------------------------------------------------------------------------------------
TOKEN = b'"content":"tok'
LAST_CHUNK = b"\r\n0\r\n\r\n"  # the chunk of length zero that ends a chunked response


async def one_stream(
    port: int, path: str, chunks: int, gap_ms: int, model: str = "bench", to_end: bool = False
) -> tuple[float, list[float]]:
    """(time to first chunk, gaps between chunks) in seconds, for one streamed completion; `model`:
    `bench`, or `route` or `slow` for the routing scenarios (the upstream reads only the numbers after
    it). The client leaves once its `chunks` token chunks arrived, or with `to_end` once the target
    ended the response (its last chunk, or closing the connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = json.dumps(
        {
            "model": f"{model}-{chunks}-{gap_ms}",
            "stream": True,
            "messages": [{"role": "user", "content": "go"}],
        }
    ).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {BENCH_KEY}\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body
    arrivals: list[float] = []
    tail = b""  # the end of the bytes read before, shorter than TOKEN: one cut in two is found once
    started = time.perf_counter()
    writer.write(request)
    try:
        while to_end or len(arrivals) < chunks:
            data = await reader.read(65536)
            if not data:
                break
            now = time.perf_counter()
            seen = tail + data
            arrivals.extend([now] * seen.count(TOKEN))
            if to_end and seen.endswith(LAST_CHUNK):
                break
            tail = seen[1 - len(TOKEN) :]
    finally:
        writer.close()
    if len(arrivals) < chunks:
        raise RuntimeError(f"{path}: {len(arrivals)} of {chunks} chunks arrived")
    return arrivals[0] - started, [b - a for a, b in itertools.pairwise(arrivals)]


async def asked(port: int) -> int:
    """How many completions the bench upstream on `port` has been asked for."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /asked HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
    answer = await reader.read()  # to the end: the upstream closes the connection after it
    writer.close()
    return int(answer.rpartition(b"\r\n\r\n")[2])


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


QUIET = 0.005  # seconds between a sequential request's end and the next one


async def sequential(ports: dict[str, int], pairs: int, order: list[str]) -> dict[str, list[float]]:
    """Time to first token of each target, asked in turn (`order`) `pairs` times after a warm-up. Each
    request is read to its end and followed by a short pause: the target that just answered has then
    finished with it (the finish, [DONE], its bookkeeping and log line) and does not share the CPU
    with the next target's request being measured."""
    ttft: dict[str, list[float]] = {name: [] for name in ports}
    for i in range(pairs + 20):
        for name in order:
            t, _ = await one_stream(ports[name], "/v1/chat/completions", 6, 5, to_end=True)
            if i >= 20:  # warm-up: connection pools, caches
                ttft[name].append(t)
            await asyncio.sleep(QUIET)
    return ttft


def cpu_seconds(server: psutil.Process) -> float:
    """User and system time of a target's process and its children (LiteLLM's worker)."""
    total = 0.0
    for proc in (server, *server.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


async def concurrent(
    port: int, server: psutil.Process, streams: int, chunks: int, gap_ms: int, model: str = "bench"
) -> dict:
    """`streams` streams started at once. In the routing scenarios (`model` route or slow) a stream
    that fails is counted, not fatal."""
    path = "/v1/chat/completions"
    wall, cpu, served = time.perf_counter(), time.process_time(), cpu_seconds(server)
    outcomes = await asyncio.gather(
        *(one_stream(port, path, chunks, gap_ms, model) for _ in range(streams)),
        return_exceptions=model != "bench",
    )
    server_cpu = cpu_seconds(server) - served
    results = [r for r in outcomes if not isinstance(r, BaseException)]
    if not results:
        raise RuntimeError(f"every stream failed: {outcomes[0]!r}")
    gaps = [g for _, gs in results for g in gs]
    limit = 2 * gap_ms / 1000
    return {
        "p99_gap": pct(gaps, 99),
        "over_2x": sum(g > limit for g in gaps) / len(gaps),
        "p50_ttft": pct([t for t, _ in results], 50),
        "p99_ttft": pct([t for t, _ in results], 99),
        "failed": 1 - len(results) / streams,
        # the client's share of one core meanwhile: far below 1, it was not what held streams back
        "client_cpu": (time.process_time() - cpu) / (time.perf_counter() - wall),
        # the target's own CPU per relayed chunk, per-request work included (direct: the upstream's)
        "server_cpu_per_chunk": server_cpu / (len(results) * chunks),
    }


async def slowed_share(
    args: argparse.Namespace, port: int, server: psutil.Process, upstreams: tuple[int, int]
) -> dict:
    """The slowed scenario for one target (`concurrent`), with the share of its streams that the
    slowed upstream served: `upstreams` (the slowed one's port, the healthy one's) count them."""
    before = [await asked(p) for p in upstreams]
    result = await concurrent(port, server, args.route_streams, args.chunks, args.gap, "slow")
    slowed, healthy = [await asked(p) - b for p, b in zip(upstreams, before, strict=True)]
    return {**result, "slowed_share": slowed / max(1, slowed + healthy)}


async def one_round(
    args: argparse.Namespace,
    ports: dict[str, int],
    servers: dict[str, psutil.Process],
    n: int,
    slowed: tuple[dict[str, int], dict[str, psutil.Process], tuple[int, int]] | None = None,
) -> dict:
    """One round; the targets' order turns round by round so none always goes first. `slowed`: the
    targets of the slowed scenario (their ports and processes) and the two upstreams' ports."""
    names = list(ports)
    order = names[n % len(names) :] + names[: n % len(names)]
    ttft = await sequential(ports, args.pairs, order)
    seq = {name: (pct(ttft[name], 50), pct(ttft[name], 99)) for name in names}
    conc = {}
    for streams in args.streams:
        conc[streams] = {
            name: await concurrent(ports[name], servers[name], streams, args.chunks, args.gap)
            for name in order
        }
    route = {}
    if args.route_streams:
        route = {
            name: await concurrent(
                ports[name], servers[name], args.route_streams, args.chunks, args.gap, "route"
            )
            for name in order
        }
    slow = {}
    if slowed is not None:
        slow_ports, slow_servers, upstreams = slowed
        slow = {
            name: await slowed_share(args, slow_ports[name], slow_servers[name], upstreams) for name in order
        }
    return {"seq": seq, "conc": conc, "route": route, "slow": slow}


def spread(values: list[float], scale: float = 1000, fmt: str = "{:.2f}") -> str:
    """The median and the range of a figure over the rounds."""
    ordered = sorted(v * scale for v in values)
    median = statistics.median(ordered)
    return f"{fmt.format(median)} ({fmt.format(ordered[0])}-{fmt.format(ordered[-1])})"


# -- orchestration ---------------------------------------------------------------------------------
def start_upstream(tmp: Path, kind: str = "healthy") -> tuple[subprocess.Popen, int]:
    """The bench upstream of `kind` (upstream_main) in a process of its own."""
    flag = "--upstream" if kind == "healthy" else f"--{kind}-upstream"
    return _start_own(tmp, kind, flag, str(tmp / f"{kind}.port"))


def start_bare_asgi(tmp: Path, wrap: tuple[str, ...] = ()) -> tuple[subprocess.Popen, int]:
    return _start_own(tmp, "bare", "--bare-asgi", str(tmp / "bare.port"), wrap=wrap)


def start_pipe(tmp: Path, upstream_port: int, wrap: tuple[str, ...] = ()) -> tuple[subprocess.Popen, int]:
    return _start_own(tmp, "pipe", "--pipe", f"{tmp / 'pipe.port'}:{upstream_port}", wrap=wrap)


def _start_own(tmp: Path, name: str, *args: str, wrap: tuple[str, ...] = ()) -> tuple[subprocess.Popen, int]:
    """This module in a process of its own, as the upstream or the pipe; its port, once it listens.
    `wrap`: a command it runs under (bench.instructions: valgrind), which makes it start slower."""
    portfile = tmp / f"{name}.port"
    proc = subprocess.Popen([*wrap, sys.executable, __file__, *args])
    for _ in range(1200 if wrap else 200):
        if portfile.exists() and portfile.read_text():
            return proc, int(portfile.read_text())
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the bench {name} did not start")


def relay_config(upstream_port: int, failing_port: int) -> str:
    """The relay's config: `bench-*` models go to the upstream; the failing scenario's (`route-*`)
    to the failing upstream first, then to the upstream."""
    return _ai_config(
        _provider("bench", upstream_port, "bench-*")
        + _provider("failing", failing_port, "route-*", ", retries: {attempts: 1}")
        + _provider("healthy", upstream_port, "route-*")
    )


def slowed_relay_config(slowed_port: int, upstream_port: int) -> str:
    """The slowed scenario's relay config: `slow-*` models on the slowed upstream and the upstream
    (in that order), the one with the fewest requests in flight first (`routing` is for all models)."""
    return _ai_config(
        _provider("slowed", slowed_port, "slow-*") + _provider("healthy", upstream_port, "slow-*"),
        "least_busy",
    )


def _ai_config(providers: str, routing: str = "") -> str:
    """`routing` left out: the default, fallback (a baseline checkout may predate the key)."""
    routing = f"  routing: {routing}\n" if routing else ""
    return f"ai:\n{routing}  providers:\n{providers}topics: {{}}\n"


def _provider(name: str, port: int, models: str, more: str = "") -> str:
    """One provider of a relay config, on a bench upstream; `more`: further keys."""
    return (
        f"    - {{name: {name}, base_url: 'http://127.0.0.1:{port}/v1', models: ['{models}'],"
        f" include_usage: false, timeouts: {{first_token: 30, idle: 30, total: 120}}{more}}}\n"
    )


def start_relay(
    tmp: Path, config_text: str, checkout: Path = ROOT, name: str = "relay", wrap: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, int]:
    """`dashboard serve` from `checkout` (this one, or a baseline's) with `config_text`; `wrap` as
    for `_start_own`."""
    tmp = tmp / f"{checkout.name}-{name}"
    tmp.mkdir(exist_ok=True)
    config = tmp / "config.yaml"
    config.write_text(config_text)
    log = (tmp / "relay.log").open("wb")
    # In its own folder, where its default broker keeps its file, importing `checkout`'s code.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(checkout), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [*wrap, sys.executable, "-m", "dashboard", "serve", "--config", str(config), "--port", "0"],
        cwd=tmp,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    for _ in range(1800 if wrap else 300):
        text = (tmp / "relay.log").read_text(errors="replace")
        match = re.search(r"serving on http://\S+:(\d+)", text)
        if match:
            return proc, int(match.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"the relay did not start:\n{text}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the relay did not start")


def find_litellm(given: str | None) -> str | None:
    """LiteLLM's `litellm` command: `given` (--litellm, or $BENCH_LITELLM), else the one beside this
    Python (its virtual environment's bin), else one on PATH; None when there is none."""
    if given:
        found = shutil.which(given)
        if found is None:
            raise SystemExit(f"--litellm {given}: no such command (leave it out, or '', to go without)")
        return found
    beside = Path(sys.executable).parent / "litellm"
    return str(beside) if beside.exists() else shutil.which("litellm")


def litellm_config(upstream_port: int, failing_port: int) -> str:
    """LiteLLM's config, as the relay's: `route-*` models on two deployments, the failing upstream and
    the upstream (a failure is retried on the other)."""
    return _litellm_config(
        [("bench-*", upstream_port), ("route-*", failing_port), ("route-*", upstream_port)],
        "num_retries: 2\n  allowed_fails: 3\n  cooldown_time: 30",
    )


def slowed_litellm_config(slowed_port: int, upstream_port: int) -> str:
    """The slowed scenario's LiteLLM config: `slow-*` models on two deployments, the slowed upstream and
    the upstream, with its least-busy routing strategy."""
    return _litellm_config(
        [("slow-*", slowed_port), ("slow-*", upstream_port)], "routing_strategy: least-busy"
    )


def _litellm_config(deployments: list[tuple[str, int]], router_settings: str) -> str:
    deployment = "  - model_name: '{}'\n    litellm_params:\n      model: 'openai/*'\n"
    deployment += "      api_base: 'http://127.0.0.1:{}/v1'\n      api_key: 'unused'\n"
    return (
        "model_list:\n"
        + "".join(deployment.format(name, port) for name, port in deployments)
        + f"router_settings:\n  {router_settings}\n"
        + f"general_settings:\n  master_key: '{BENCH_KEY}'\n"
    )


def start_litellm(
    tmp: Path, command_path: str, config_text: str, name: str = "litellm"
) -> tuple[subprocess.Popen, int]:
    """LiteLLM's proxy (one worker) with `config_text`, in front of the same upstreams, as a peer."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp / f"{name}.yaml"
    config.write_text(config_text)
    log = (tmp / f"{name}.log").open("wb")
    command = [
        command_path,
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(1200):  # it takes a while to import
        with socket.socket() as s, contextlib.suppress(OSError):
            s.connect(("127.0.0.1", port))
            return proc, port
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"LiteLLM's proxy did not start:\n{(tmp / f'{name}.log').read_text(errors='replace')}")


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


PIPE = "python-pipe"
OURS = "sse-dashboard"


def ratios(figures: list[dict], name: str, to: str, key: Callable[[Any], float]) -> list[float]:
    """Target `name`'s figure (`key` of its figures) over target `to`'s, round by round."""
    return [key(f[name]) / key(f[to]) for f in figures]


def report(rounds: list[dict], args: argparse.Namespace, info: dict, load_before: tuple, note: str) -> str:
    names = [n for n in rounds[0]["seq"] if n != "direct"]
    lines = [
        f"Machine: {info['nproc']} CPUs, {info['cpu']}, Python {info['python']}; "
        f"load average before/after: {load_before[0]:.2f} / {info['load'][0]:.2f}",
        "",
        f"Each figure: the median of {len(rounds)} rounds, (min-max) over them; targets asked in turn, "
        "the order turning each round; a ratio to the pipe is taken round by round.",
        "",
        f"Sequential, {args.pairs} requests per target and round, 6 chunks 5 ms apart, each read to its "
        f"end and followed by a {QUIET * 1000:.0f} ms pause (the target that answered it is done before "
        "the next request); added = the target's time to first token less the upstream's own (direct), "
        "in ms:",
        "",
        "| target | TTFT p50 | TTFT p99 | added p50 | added p99 | TTFT p50 / pipe's |",
        "|---|---|---|---|---|---|",
    ]
    for name in ["direct", *names]:
        p50 = [r["seq"][name][0] for r in rounds]
        p99 = [r["seq"][name][1] for r in rounds]
        added50 = [r["seq"][name][0] - r["seq"]["direct"][0] for r in rounds]
        added99 = [r["seq"][name][1] - r["seq"]["direct"][1] for r in rounds]
        added = "| - | - |" if name == "direct" else f"| {spread(added50)} | {spread(added99)} |"
        to_pipe = spread(ratios([r["seq"] for r in rounds], name, PIPE, lambda f: f[0]), 1, "{:.1f}x")
        lines.append(f"| {name} | {spread(p50)} | {spread(p99)} {added} {to_pipe} |")
    scenarios = [
        (f"{streams} concurrent streams", lambda r, streams=streams: r["conc"][streams], "")
        for streams in args.streams
    ]
    if args.route_streams:
        title = (
            f"Routing: {args.route_streams} concurrent streams of a model two upstreams serve, the first "
            "of them failing every request at once (503). The relays fall back to the second (sse-dashboard: "
            "`routing: fallback`, no retry at the failing one, which its cool-down then passes over; "
            "LiteLLM: two deployments, `num_retries: 2`, `allowed_fails: 3`); direct and the pipe go to the "
            "healthy one: the floor. Failed: streams that ended without their answer"
        )
        scenarios.append((title, lambda r: r["route"], "failing"))
        title = (
            f"Routing: {args.route_streams} concurrent streams of a model two upstreams serve, the first "
            f"of them slowed (its first chunk {SLOWED_FIRST * 1000:.0f} ms late, then streaming as the "
            "other). The relays send each stream to the upstream with the fewest requests in flight "
            "(sse-dashboard: `routing: least_busy`; LiteLLM: `routing_strategy: least-busy`; each in a "
            "process of its own, the setting being for all models); direct and the pipe go to the healthy "
            "one: the floor. Slowed: the share of the streams the slowed upstream served (information; "
            "no target)"
        )
        scenarios.append((title, lambda r: r["slow"], "slowed"))
    for title, scenario, routing in scenarios:
        slowed = routing == "slowed"
        head = ["target", "gaps over 2x, %", "p99 gap, ms", *(["TTFT p50, ms"] if slowed else [])]
        head += ["TTFT p99, ms", "TTFT p99 / direct's", "TTFT p99 / pipe's", "client CPU"]
        head += ["server CPU per chunk, µs", "server CPU / pipe's", *(["failed, %"] if routing else [])]
        head += ["slowed, %"] if slowed else []
        lines += [
            "",
            f"{title}; {args.chunks} chunks {args.gap} ms apart (target: at most 0.5% of gaps over "
            f"{2 * args.gap} ms; client CPU: the bench client's CPU time over the wall time, 100% being one "
            "core; server CPU: the target process's CPU time per chunk, per-request work included, direct's "
            "being the upstream's own):",
            "",
            "| " + " | ".join(head) + " |",
            "|---" * len(head) + "|",
        ]
        figures = [scenario(r) for r in rounds]
        for name in ["direct", *names]:
            res = [f[name] for f in figures]
            cells = [
                name,
                spread([x["over_2x"] for x in res], 100, "{:.2f}"),
                spread([x["p99_gap"] for x in res], fmt="{:.1f}"),
            ]
            if slowed:
                cells.append(spread([x["p50_ttft"] for x in res], fmt="{:.0f}"))
            cells += [
                spread([x["p99_ttft"] for x in res], fmt="{:.0f}"),
                spread(ratios(figures, name, "direct", lambda f: f["p99_ttft"]), 1, "{:.1f}x"),
                spread(ratios(figures, name, PIPE, lambda f: f["p99_ttft"]), 1, "{:.1f}x"),
                spread([x["client_cpu"] for x in res], 100, "{:.0f}%"),
                spread([x["server_cpu_per_chunk"] for x in res], 1e6, "{:.0f}"),
                spread(ratios(figures, name, PIPE, lambda f: f["server_cpu_per_chunk"]), 1, "{:.1f}x"),
            ]
            if routing:
                cells.append(spread([x["failed"] for x in res], 100, "{:.1f}"))
            if slowed:
                cells.append(spread([x["slowed_share"] for x in res], 100, "{:.0f}"))
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *targets(rounds, args)]
    if note:
        lines += ["", note]
    return "\n".join(lines)


def targets(rounds: list[dict], args: argparse.Namespace) -> list[str]:
    """Issue 23's targets for sse-dashboard, each with its figure (median and range) and whether the
    median meets it."""
    out = ["Targets (sse-dashboard; the median decides):", ""]

    def check(what: str, values: list[float], limit: float, fmt: str, scale: float = 1) -> None:
        met = "met" if statistics.median(values) <= limit else "NOT met"
        out.append(f"- {what}: {spread(values, scale, fmt)}, target {fmt.format(limit * scale)}: {met}")

    added = [r["seq"][OURS][0] - r["seq"]["direct"][0] for r in rounds]
    check("sequential added TTFT p50, ms", added, 0.0003, "{:.2f}", 1000)
    for streams in args.streams:
        conc = [r["conc"][streams] for r in rounds]
        cpu = [c[OURS]["server_cpu_per_chunk"] / c[PIPE]["server_cpu_per_chunk"] for c in conc]
        ttft = [c[OURS]["p99_ttft"] / c[PIPE]["p99_ttft"] for c in conc]
        check(f"{streams} streams: server CPU per chunk / pipe's", cpu, 2, "{:.1f}x")
        check(f"{streams} streams: TTFT p99 / pipe's", ttft, 3, "{:.1f}x")
        check(f"{streams} streams: gaps over 2x, %", [c[OURS]["over_2x"] for c in conc], 0.005, "{:.2f}", 100)
    if args.route_streams:
        # No target is set for it beyond measuring ours against LiteLLM in the same run.
        for name in [n for n in rounds[0]["slow"] if n not in ("direct", PIPE)]:
            slow = [r["slow"][name] for r in rounds]
            out.append(
                f"- slowed upstream, {name} (information): TTFT p50 "
                f"{spread([s['p50_ttft'] for s in slow], fmt='{:.0f}')} ms, p99 "
                f"{spread([s['p99_ttft'] for s in slow], fmt='{:.0f}')} ms, served by the slowed upstream "
                f"{spread([s['slowed_share'] for s in slow], 100, '{:.0f}')}%"
            )
    return out


def write_results(text: str) -> None:
    """Add this run to bench/RESULTS.md as the newest entry of its Relay section (which keeps the
    earlier runs and what was learnt from them), or start that section."""
    path = ROOT / "bench" / "RESULTS.md"
    existing = path.read_text() if path.exists() else "# Benchmark results\n"
    entry = f"### {time.strftime('%Y-%m-%d %H:%M')}: `python -m bench.relay`\n\n{text.strip()}\n\n"
    heading = "## Relay\n\n"
    if heading in existing:
        existing = existing.replace(heading, heading + entry, 1)
    else:
        existing = existing.rstrip("\n") + "\n\n" + heading + entry
    path.write_text(existing.rstrip("\n") + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", metavar="PORTFILE", help=argparse.SUPPRESS)
    parser.add_argument("--failing-upstream", metavar="PORTFILE", help=argparse.SUPPRESS)
    parser.add_argument("--slowed-upstream", metavar="PORTFILE", help=argparse.SUPPRESS)
    parser.add_argument("--pipe", metavar="PORTFILE:UPSTREAM_PORT", help=argparse.SUPPRESS)
    parser.add_argument("--bare-asgi", metavar="PORTFILE", help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=int, default=400, help="sequential requests per target (default 400)")
    parser.add_argument(
        "--streams",
        type=lambda v: [int(n) for n in v.split(",") if n],
        default=[200, 500],
        help="concurrent streams, comma-separated (default 200,500; '' for the sequential part alone)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; figures are their medians (default 3)")
    parser.add_argument("--chunks", type=int, default=50, help="chunks per concurrent stream (default 50)")
    parser.add_argument("--gap", type=int, default=20, help="upstream gap between chunks, ms (default 20)")
    parser.add_argument(
        "--route-streams",
        type=int,
        default=200,
        help="concurrent streams of each routing scenario, the failing and the slowed upstream "
        "(default 200; 0 leaves them out)",
    )
    parser.add_argument(
        "--litellm",
        default=os.environ.get("BENCH_LITELLM"),
        help="LiteLLM's `litellm` command, e.g. in a virtualenv of its own (default: $BENCH_LITELLM, "
        "else the one beside this Python, else on PATH)",
    )
    parser.add_argument(
        "--write-results",
        action="store_true",
        help="add this run to bench/RESULTS.md (its Relay section, newest first)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. `git worktree add` of an earlier commit) relayed beside this one, "
        "as target sse-dashboard@baseline: an A/B in the same run, the two asked in turn (the slowed "
        "scenario needs one with `ai.routing`; else --route-streams 0)",
    )
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        uvloop = None
    runner = uvloop.run if uvloop else asyncio.run
    for kind in ("healthy", "failing", "slowed"):
        portfile = getattr(args, "upstream" if kind == "healthy" else f"{kind}_upstream")
        if portfile:
            runner(upstream_main(portfile, kind))
            return 0
    if args.pipe or args.bare_asgi:
        with contextlib.suppress(KeyboardInterrupt):  # how bench.instructions stops them
            runner(pipe_main(args.pipe) if args.pipe else bare_asgi_main(args.bare_asgi))
        return 0

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        procs: list[subprocess.Popen] = []

        def own(target: tuple[subprocess.Popen, int]) -> tuple[subprocess.Popen, int]:
            procs.append(target[0])  # stopped at the end, whatever happens
            return target

        try:
            upstream = own(start_upstream(tmp))
            up_port = upstream[1]
            failing_port = own(start_upstream(tmp, "failing"))[1]
            # The targets (process, port) of every scenario but the slowed one, and those of the slowed
            # one: the relays have processes of their own there (their routing is for all models),
            # direct and the pipe go to the healthy upstream.
            started = {"direct": upstream, PIPE: own(start_pipe(tmp, up_port))}
            slowed = dict(started)
            if args.route_streams:
                slowed_port = own(start_upstream(tmp, "slowed"))[1]
            relays = {OURS: ROOT}
            if args.baseline is not None:
                relays[f"{OURS}@baseline"] = args.baseline.resolve()
            for name, checkout in relays.items():
                started[name] = own(start_relay(tmp, relay_config(up_port, failing_port), checkout))
                if args.route_streams:
                    config = slowed_relay_config(slowed_port, up_port)
                    slowed[name] = own(start_relay(tmp, config, checkout, "slowed"))
            note = ""
            litellm = find_litellm(args.litellm)
            if litellm is None:
                note = (
                    "LiteLLM's proxy: skipped, not found (`pip install 'litellm[proxy]'`, in a virtualenv of "
                    "its own if you like, then `--litellm PATH/bin/litellm`)."
                )
            else:
                started["litellm"] = own(start_litellm(tmp, litellm, litellm_config(up_port, failing_port)))
                if args.route_streams:
                    config = slowed_litellm_config(slowed_port, up_port)
                    slowed["litellm"] = own(start_litellm(tmp, litellm, config, "litellm-slowed"))
            ports = {name: port for name, (_, port) in started.items()}
            servers = {name: psutil.Process(proc.pid) for name, (proc, _) in started.items()}
            slowed_scenario = None
            if args.route_streams:
                slowed_scenario = (
                    {name: port for name, (_, port) in slowed.items()},
                    {name: psutil.Process(proc.pid) for name, (proc, _) in slowed.items()},
                    (slowed_port, up_port),
                )
            rounds = []
            for n in range(args.rounds):
                rounds.append(runner(one_round(args, ports, servers, n, slowed_scenario)))
                print(f"round {n + 1} of {args.rounds} done", file=sys.stderr)
        finally:
            for proc in reversed(procs):
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    text = report(rounds, args, machine(), load_before, note)
    print(text)
    if args.write_results:
        write_results(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
