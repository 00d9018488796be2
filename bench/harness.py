"""Benchmark harness: start a target server, drive it from several client processes, measure it.

Targets: `sse-dashboard` (this project), `sse-starlette` (bench/peer_sse_starlette.py) and
`nginx-nchan` (nginx with Debian's libnginx-mod-nchan, when installed). Each target publishes
timestamped events to one topic at a fixed rate; clients count what arrives and sample latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.capacity import RESERVE, bound_socket, client_processes, raise_own_files_limit, source_addresses

ROOT = Path(__file__).resolve().parent.parent
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
TARGETS = ("sse-dashboard", "sse-starlette", "nginx-nchan")
PUBLISH_TOKEN = "bench"  # sse-dashboard's publish token (loopback only)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = psutil.virtual_memory().total >> 30
    return f"{os.cpu_count()} cores, {cpu}, {memory} GiB, Python {platform.python_version()}"


class Skipped(Exception):
    """The target cannot run on this machine (the message says why and how to install it)."""


@dataclass
class Target:
    name: str
    port: int
    path: str
    publish_path: str = ""  # where one event is POSTed (sse-starlette has none)
    procs: list[subprocess.Popen] = field(default_factory=list)
    workdir: Path | None = None

    def pids(self) -> list[int]:
        """The server's processes (nginx: master and workers), not the publisher."""
        main = psutil.Process(self.procs[0].pid)
        return [main.pid, *(c.pid for c in main.children(recursive=True))]

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self.pids():
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def rss(self) -> int:
        return sum(psutil.Process(pid).memory_info().rss for pid in self.pids())

    def publish(self, size: int = 100) -> None:
        """POST one timestamped event to every stream."""
        body = json.dumps({"t": time.time(), "n": 0, "pad": "x" * max(0, size - 40)}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{self.publish_path}",
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {PUBLISH_TOKEN}", "Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=10).read()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"target exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def start(
    name: str, *, rate_hz: float, size: int = 100, keepalive: float = 15.0, broker: str = "memory://"
) -> Target:
    """Start target `name`; sse-dashboard with `broker` ("sqlite" for a file in its own folder)."""
    port = free_port()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    if name == "sse-dashboard":
        workdir = Path(tempfile.mkdtemp(prefix="bench-"))
        config = workdir / "config.yaml"
        url = f"sqlite:///{workdir}/bench.db" if broker == "sqlite" else broker
        config.write_text(
            textwrap.dedent(
                f"""
                server: {{keepalive: {keepalive}, max_backlog: 4096, max_streams_per_client: 1000000}}
                broker: {{url: "{url}"}}
                auth: {{publish_tokens: ["{PUBLISH_TOKEN}"]}}
                topics:
                  bench:
                    feed: "bench.feeds:Stamp"
                    options: {{rate_hz: {rate_hz}, size: {size}}}
                    history: 100
                """
            )
        )
        cmd = [
            sys.executable,
            "-m",
            "dashboard",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        target = Target(name, port, "/sse/bench?replay=0", "/publish/bench", workdir=workdir)
        target.procs.append(subprocess.Popen(cmd, cwd=ROOT, **quiet))
    elif name == "sse-starlette":
        cmd = [sys.executable, "-m", "bench.peer_sse_starlette", str(port), str(rate_hz), str(size)]
        target = Target(name, port, "/sse/bench")
        target.procs.append(subprocess.Popen(cmd, cwd=ROOT, **quiet))
    elif name == "nginx-nchan":
        if not (shutil.which("nginx") and NCHAN_MODULE.exists()):
            raise Skipped("nginx with Nchan is not installed (apt-get install -y nginx libnginx-mod-nchan)")
        workdir = Path(tempfile.mkdtemp(prefix="bench-nchan-"))
        (workdir / "logs").mkdir()
        # worker_connections twice the open files: Nchan takes connection slots besides its sockets
        # (as many as the open files held 18,747 streams of 19,000, "reusing connections").
        (workdir / "nginx.conf").write_text(
            textwrap.dedent(
                f"""
                load_module {NCHAN_MODULE};
                worker_processes 1;
                error_log {workdir}/logs/error.log warn;
                pid {workdir}/nginx.pid;
                events {{ worker_connections {2 * resource.getrlimit(resource.RLIMIT_NOFILE)[0]}; }}
                http {{
                  access_log off;
                  client_body_temp_path {workdir};
                  server {{
                    listen 127.0.0.1:{port} backlog=4096;
                    location = /sub {{
                      nchan_subscriber eventsource;
                      nchan_channel_id bench;
                      nchan_eventsource_ping_interval {int(keepalive)};
                    }}
                    location = /pub {{
                      nchan_publisher;
                      nchan_channel_id bench;
                      nchan_message_buffer_length 100;
                    }}
                  }}
                }}
                """
            )
        )
        cmd = ["nginx", "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-g", "daemon off;"]
        target = Target(name, port, "/sub", "/pub", workdir=workdir)
        target.procs.append(subprocess.Popen(cmd, **quiet))
        _wait_port(port, target.procs[0])
        publisher = [
            sys.executable,
            "-m",
            "bench.harness",
            "publish-nchan",
            str(port),
            str(rate_hz),
            str(size),
        ]
        target.procs.append(subprocess.Popen(publisher, cwd=ROOT, **quiet))
    else:
        raise ValueError(f"unknown target {name!r}; one of {TARGETS}")
    _wait_port(port, target.procs[0])
    return target


def alternating(names: tuple[str, ...], rounds: int, body, **start_options) -> dict[str, list | str]:
    """`body(target)` for each target started in turn, `rounds` times, the order reversed every other
    round (none always goes first): each one's results in round order, or why it cannot run."""
    results: dict[str, list | str] = {name: [] for name in names}
    for n in range(rounds):
        for name in names if n % 2 == 0 else names[::-1]:
            if isinstance(results[name], str):
                continue
            try:
                target = start(name, **start_options)
            except Skipped as exc:
                results[name] = f"skipped: {exc}"
                continue
            try:
                results[name].append(body(target))
            finally:
                target.stop()
    return results


def each_target(names: tuple[str, ...], body, **start_options) -> dict[str, object]:
    """`body(target)` for each target started in turn; a target that cannot run says why."""
    results = alternating(names, 1, body, **start_options)
    return {name: found if isinstance(found, str) else found[0] for name, found in results.items()}


def spread(values: list[float], unit: str = "", digits: int = 2) -> str:
    """The median of a figure over rounds, and its range."""
    return f"{statistics.median(values):.{digits}f}{unit} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def publish_nchan(port: int, rate_hz: float, size: int) -> None:
    """Nchan has no in-process publisher: POST each event to its publisher endpoint."""
    pad = "x" * max(0, size - 40)
    start_t = time.monotonic()
    n = 0
    while True:
        n += 1
        body = json.dumps({"t": time.time(), "n": n, "pad": pad}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/pub", data=body, method="POST")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(request, timeout=5).read()
        time.sleep(max(0.0, start_t + n / rate_hz - time.monotonic()))


# -- load clients -----------------------------------------------------------------------------
_STAMP = re.compile(rb'"t": ?([0-9.]+)')


_PING = re.compile(rb"(?m)^(?::|event: ping$)")  # a keepalive: an SSE comment, or Nchan's ping event
CONNECTING = 200  # connections one client process has under way at once; the rest wait their turn


async def _client_main(port, path, count, sample, ctl, out, hold_open, sources):
    counts = [0]
    latencies: list[float] = []
    gaps: list[float] = []  # seconds between an idle stream's keepalives, while measuring
    measuring = [False]
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()
    loop = asyncio.get_running_loop()
    connecting = asyncio.Semaphore(CONNECTING)
    established, failed = [0], [0]
    all_established = asyncio.Event()

    def opened(ok: bool) -> None:
        connecting.release()
        established[0] += ok
        failed[0] += not ok
        if established[0] + failed[0] == count:
            all_established.set()

    async def one(i: int) -> None:
        await connecting.acquire()
        first = True
        try:
            sock = bound_socket(sources[i % len(sources)])
            try:
                await loop.sock_connect(sock, ("127.0.0.1", port))
            except OSError:
                sock.close()
                raise
            reader, writer = await asyncio.open_connection(sock=sock)
        except OSError:
            opened(False)
            return
        writer.write(request)
        sampled = i % max(1, count // max(1, sample)) == 0  # spread over the whole fan-out
        last_ping = 0.0  # when the stream's last keepalive came, while measuring and idle
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                if first:  # the response has started: this stream is open
                    first = False
                    opened(True)
                if measuring[0]:
                    counts[0] += chunk.count(b"data:")
                    if sampled:
                        now = time.time()
                        latencies.extend(now - float(m) for m in _STAMP.findall(chunk))
                    if not _PING.search(chunk):
                        last_ping = 0.0  # an event: the next keepalive's period starts after it
                    else:
                        now = time.monotonic()
                        if last_ping:
                            gaps.append(now - last_ping)
                        last_ping = now
        except OSError:
            return
        finally:
            if first:
                opened(False)
            writer.close()

    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    await all_established.wait()
    ctl["connected"].release()
    while not ctl["start"].is_set():
        await asyncio.sleep(0.02)
    cpu0 = time.process_time()
    measuring[0] = True
    while not ctl["stop"].is_set():
        await asyncio.sleep(0.02)
    measuring[0] = False
    cpu = time.process_time() - cpu0
    if not hold_open:
        for t in tasks:
            t.cancel()
    out.put({"events": counts[0], "latencies": latencies, "cpu": cpu, "gaps": gaps, "failed": failed[0]})
    if hold_open:
        while not ctl["release"].is_set():
            await asyncio.sleep(0.05)
        for t in tasks:
            t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _client_process(*args):
    try:
        import uvloop

        uvloop.run(_client_main(*args))
    except ImportError:
        asyncio.run(_client_main(*args))


@dataclass
class Run:
    target: str
    subscribers: int
    seconds: float
    events: int
    server_cpu: float
    client_cpu: list[float]
    latencies: list[float]
    expected: int
    rss_growth: int = 0
    gaps: list[float] = field(default_factory=list)  # between an idle stream's keepalives
    failed: int = 0  # streams that did not open
    load: float = 0.0  # the machine's load average (1 min) as the run began

    @property
    def cpu_us_per_event(self) -> float:
        return 1e6 * self.server_cpu / self.events if self.events else float("inf")

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    @property
    def client_limited(self) -> bool:
        return any(c > 0.9 * self.seconds for c in self.client_cpu)

    @property
    def delivered_ratio(self) -> float:
        return self.events / self.expected if self.expected else 1.0


def drive(
    target: Target,
    subscribers: int,
    seconds: float,
    *,
    rate_hz: float,
    processes: int = 4,
    sample: int = 50,
    warmup: float = 2.0,
    hold_open: bool = False,
    during: Callable[[], None] | None = None,
) -> tuple[Run, dict]:
    """Open `subscribers` streams over `processes` client processes (more when their open files
    call for it; spread over loopback source addresses for ports), measure for `seconds`, or while
    `during()` runs (`seconds` is then the time it took)."""
    load = os.getloadavg()[0]
    raise_own_files_limit(subscribers + RESERVE)  # the client processes inherit it
    ctx = mp.get_context("spawn")
    ctl = {"connected": ctx.Semaphore(0), "start": ctx.Event(), "stop": ctx.Event(), "release": ctx.Event()}
    out = ctx.Queue()
    rss0 = target.rss()
    processes = client_processes(subscribers, processes)
    sources = source_addresses(subscribers)
    share = [subscribers // processes + (1 if i < subscribers % processes else 0) for i in range(processes)]
    workers = [
        ctx.Process(
            target=_client_process,
            args=(target.port, target.path, n, max(1, sample // processes), ctl, out, hold_open, sources),
            daemon=True,
        )
        for n in share
        if n
    ]
    for w in workers:
        w.start()
    for _ in workers:
        if not ctl["connected"].acquire(timeout=120 + subscribers / 200):
            raise RuntimeError("clients did not connect")
    time.sleep(warmup)
    cpu0 = target.cpu_seconds()
    ctl["start"].set()
    began = time.monotonic()
    if during is None:
        time.sleep(seconds)
    else:
        during()
        seconds = time.monotonic() - began
    ctl["stop"].set()
    server_cpu = target.cpu_seconds() - cpu0
    rss_growth = target.rss() - rss0
    results = [out.get(timeout=60) for _ in workers]
    run = Run(
        target=target.name,
        subscribers=subscribers,
        seconds=seconds,
        events=sum(r["events"] for r in results),
        server_cpu=server_cpu,
        client_cpu=[r["cpu"] for r in results],
        latencies=[x for r in results for x in r["latencies"]],
        expected=int(subscribers * rate_hz * seconds),
        rss_growth=rss_growth,
        gaps=[x for r in results for x in r["gaps"]],
        failed=sum(r["failed"] for r in results),
        load=load,
    )
    handle = {"ctl": ctl, "workers": workers}
    if not hold_open:
        release(handle)
    return run, handle


def release(handle: dict) -> None:
    handle["ctl"]["release"].set()
    for w in handle["workers"]:
        w.join(10)
        if w.is_alive():
            w.kill()


if __name__ == "__main__" and sys.argv[1:2] == ["publish-nchan"]:
    publish_nchan(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
