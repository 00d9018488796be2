"""Test support: the real server in a subprocess on a loopback port, and an SSE client to read it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
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
    proc: subprocess.Popen | None = None
    url: str = ""

    def start(self, timeout: float = 30.0) -> Server:
        cmd = [sys.executable, "-m", "dashboard", "serve", "--config", str(self.config)]
        cmd += ["--port", str(self.port), *self.args]
        logfile = self.log.open("ab")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=logfile, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
        )
        return self.wait_for_url(timeout)

    def wait_for_url(self, timeout: float = 30.0) -> Server:
        """Wait until the server prints the URL it serves on."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            match = _URL_LINE.search(self.output())
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
    ) -> Server:
        n = len(self.servers)
        path = self.tmp / f"config{n}.yaml"
        path.write_text(textwrap.dedent(config))
        server = Server(path, self.tmp / f"server{n}.log", port=port, env=env or {}, args=args or [])
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
