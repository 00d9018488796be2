"""Test support: the real server in a subprocess on a loopback port, and an SSE client to read it."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from httpx_sse import ServerSentEvent, connect_sse

ROOT = Path(__file__).resolve().parent.parent
_URL_LINE = re.compile(r"serving on (http://\S+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A `dashboard serve` process started by a test."""

    config: Path
    log: Path
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)  # extra `dashboard serve` arguments
    open_files: int | tuple[int, int] | None = (
        None  # the process's limit on open files: both, or (soft, hard)
    )
    home: Path | None = None  # the folder it runs in (default: the config's), where its files go
    proc: subprocess.Popen | None = None
    url: str = ""
    started_at: int = 0  # where in the log this start's output begins (after a restart, not 0)

    def start(self, timeout: float = 30.0) -> Server:
        cmd = [sys.executable, "-m", "dashboard", "serve", "--config", str(self.config)]
        cmd += ["--port", str(self.port), *self.args]
        self.started_at = len(self.output())
        logfile = self.log.open("ab")
        limits = (self.open_files,) * 2 if isinstance(self.open_files, int) else self.open_files
        # In a folder of its own, as a user would start it: the default broker's file lands there.
        home = self.home or self.config.parent
        home.mkdir(exist_ok=True)
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            cmd,
            cwd=home,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": path, **self.env},
            preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limits)) if limits else None,
        )
        return self.wait_for_url(timeout)

    def wait_for_url(self, timeout: float = 30.0) -> Server:
        """Wait until the server prints the URL it serves on (this start's line, not an earlier one's)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            match = _URL_LINE.search(self.output()[self.started_at :])
            if match:
                self.url = match.group(1)
                self.port = int(self.url.rsplit(":", 1)[1])
                return self
            time.sleep(0.05)
        raise AssertionError(f"server did not start in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"server did not stop within {timeout}s of signal {sig}") from None

    def restart(self) -> Server:
        """Stop, then start again on the same port."""
        self.stop()
        self.log.write_text(self.output() + "\n--- restart ---\n")
        return self.start()

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 10.0), **kwargs)


class ServerFactory:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.servers: list[Server] = []

    def __call__(
        self,
        config: str,
        *,
        port: int = 0,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        open_files: int | tuple[int, int] | None = None,
    ) -> Server:
        n = len(self.servers)
        path = self.tmp / f"config{n}.yaml"
        path.write_text(textwrap.dedent(config))
        server = Server(
            path,
            self.tmp / f"server{n}.log",
            port=port,
            env=env or {},
            args=args or [],
            open_files=open_files,
            home=self.tmp / f"server{n}",
        )
        self.servers.append(server)
        return server.start()

    def close(self) -> None:
        for server in self.servers:
            server.stop(signal.SIGKILL if server.proc and server.proc.poll() is None else signal.SIGTERM)


def read_events(
    client: httpx.Client,
    path: str,
    count: int,
    *,
    headers: dict[str, str] | None = None,
    skip: tuple[str, ...] = ("status",),
    timeout: float = 20.0,
) -> list[ServerSentEvent]:
    """The first `count` events of a stream (ignoring the event types in `skip`), then disconnect."""
    events: list[ServerSentEvent] = []
    deadline = time.monotonic() + timeout
    with connect_sse(client, "GET", path, headers=headers or {}) as source:
        assert source.response.status_code == 200, source.response.read()
        for sse in real_events(source.iter_sse()):
            if sse.event.rsplit(":", 1)[-1] in skip:
                continue
            events.append(sse)
            if len(events) >= count or time.monotonic() > deadline:
                break
    assert len(events) >= count, f"wanted {count} events within {timeout}s, got {len(events)}"
    return events


@contextmanager
def sse_stream(client: httpx.Client, path: str, headers: dict[str, str] | None = None) -> Iterator:
    """An open SSE connection: yields an iterator of its events (the opening `retry:` hint left out)."""
    with connect_sse(client, "GET", path, headers=headers or {}) as source:
        assert source.response.status_code == 200, source.response.read()
        yield real_events(source.iter_sse())


def real_events(events: Iterator[ServerSentEvent]) -> Iterator[ServerSentEvent]:
    """The events a browser would dispatch: httpx-sse also yields the opening `retry:` hint, and
    after a keepalive comment an empty "event" repeating the last id (every real event has a new id)."""
    last = None
    for sse in events:
        if not sse.id or (sse.id == last and not sse.data):
            continue
        last = sse.id
        yield sse


# -- Redis ---------------------------------------------------------------------------------------
REDIS_URL = os.environ.get("DASHBOARD_TEST_REDIS", "redis://127.0.0.1:6379/0")


def redis_answers(url: str = REDIS_URL) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key a test made under `prefix`."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def next_ids(events: Iterator[ServerSentEvent], count: int, event: str = "message") -> list[int]:
    """The ids of the next `count` events of type `event` on an open stream."""
    found: list[int] = []
    for sse in events:
        if sse.id and sse.event == event:
            found.append(int(sse.id))
        if len(found) >= count:
            break
    return found


# -- many streams at once over raw sockets (light enough for thousands) ---------------------------
_FIRST_ID = re.compile(rb"\nid: (\d+)\n")


@dataclass
class StreamStart:
    """How one raw stream opened: its status, its first event's id, and when (seconds from `t0`)."""

    status: int
    first_id: int | None = None
    at: float = 0.0
    retry_after: str | None = None
    writer: asyncio.StreamWriter | None = field(default=None, repr=False)


async def open_stream(url: str, path: str, last_id: int | None, t0: float, timeout: float) -> StreamStart:
    """GET an SSE `path` on a raw socket and read up to its first event (left open) or a refusal."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    resume = f"Last-Event-ID: {last_id}\r\n" if last_id is not None else ""
    buffer = b""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{resume}\r\n".encode())
            while chunk := await reader.read(65536):
                buffer += chunk
                head, sep, _ = buffer.partition(b"\r\n\r\n")
                if sep and not head.startswith(b"HTTP/1.1 200"):
                    writer.close()
                    found = re.search(rb"(?im)^retry-after: *(\S+)", head)
                    return StreamStart(
                        int(head[9:12]), at=time.monotonic() - t0, retry_after=found and found[1].decode()
                    )
                if sep and (match := _FIRST_ID.search(buffer)):
                    return StreamStart(200, int(match[1]), time.monotonic() - t0, writer=writer)
    except (TimeoutError, OSError):
        pass
    if writer is not None:
        writer.close()
    return StreamStart(0, at=time.monotonic() - t0)  # 0: no answer in time, or the socket failed


async def open_streams(
    requests: list[tuple[str, str, int | None]], timeout: float = 60.0, while_open=None
) -> tuple[list[StreamStart], float]:
    """Open every `(url, path, last_id)` at once; the starts, in order, and how long the last took.

    The streams that opened stay open until all have started (so they really are open at once)
    and `while_open()` has run in a thread, then close."""
    t0 = time.monotonic()
    starts = await asyncio.gather(*(open_stream(u, p, i, t0, timeout) for u, p, i in requests))
    if while_open is not None:
        await asyncio.to_thread(while_open)
    for start in starts:
        if start.writer is not None:
            start.writer.close()
    return starts, max((s.at for s in starts), default=0.0)


def run_async(coro, timeout: float = 120.0):
    """asyncio.run(coro) in a thread of its own: the browser tests' Playwright may hold an event
    loop in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=timeout)


def raise_open_files_limit(wanted: int) -> None:
    """Let this process hold `wanted` sockets (up to the hard limit): fails the caller otherwise."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= wanted, f"cannot open {wanted} files here"


def wait_for(what: str, check, timeout: float = 15.0, every: float = 0.1):
    """Poll `check()` until it returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except httpx.HTTPError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout}s (last seen: {last!r})")
