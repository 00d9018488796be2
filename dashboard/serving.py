"""How a server process starts and stops: its socket (bound before anything starts, so that a port
in use is said at once), one process or `serve --workers N` (workers that reload in place on
SIGHUP and stop when their parent is gone), the startup lines, and the signals it answers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

from dashboard import __version__
from dashboard import broker as brokers
from dashboard.auth.exposure import describe as describe_access
from dashboard.auth.exposure import network_problems
from dashboard.config import Config, load_config
from dashboard.errors import ConfigError, DashboardError, SetupError
from dashboard.security import is_loopback
from dashboard.web.admission import describe_capacity, raise_open_files_limit

if TYPE_CHECKING:
    from dashboard.runtime import Runtime

log = logging.getLogger("dashboard")


def load_checked(path: str | None) -> Config | None:
    """The config at `path`, or None after printing each of its errors with the line at fault."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{len(exc.issues)} error(s) in the configuration:", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue.shown()}", file=sys.stderr)
        return None


def quiet_client_log() -> None:
    """httpx logs every request at INFO; the relay logs one line per completion instead."""
    logging.getLogger("httpx").setLevel(logging.WARNING)


WORKER_CONFIG_ENV = "DASHBOARD_WORKER_CONFIG"  # how `serve --workers N` tells its workers the config
WORKER_HOST_ENV = "DASHBOARD_WORKER_HOST"  # ... and the address they serve on
WORKER_WATCH_ENV = "DASHBOARD_WORKER_WATCH"  # ... and whether they watch the config file
WORKER_PARENT_ENV = "DASHBOARD_WORKER_PARENT"  # ... and the process they must not outlive
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # where workers keep the metrics they share
WATCH_EVERY = 1.0  # seconds between looks at the config file under `serve --watch`


def banner(config: Config, bound: tuple, first: str, events: str = "") -> None:
    """The startup lines: the URL, the config, where events are kept, the topics, what is open to
    whom, the limits, and how many streams a process can hold."""
    from dashboard.web.gate import allowed_hosts
    from dashboard.web.protocol import KEEP_ALIVE_TIMEOUT

    shown_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    print(f"sse-dashboard {__version__} serving on http://{shown_host}:{bound[1]}", flush=True)
    print(first, flush=True)
    if events:
        print(f"  events: {events}", flush=True)
    for name, topic in config.topics.items():
        print(f"  topic {name:<20} feed {topic.feed}{' (public)' if topic.public else ''}", flush=True)
    for line in describe_access(config, allowed_hosts(config)):
        print(f"  access: {line}", flush=True)
    server = config.server
    print(
        f"  limits: request heads within {server.header_timeout:g}s, idle connections closed after "
        f"{KEEP_ALIVE_TIMEOUT}s, {server.max_streams_per_client} streams per client",
        flush=True,
    )
    print(f"  streams: {describe_capacity()}", flush=True)
    for warning in config.warnings():
        print(f"  warning: {warning}", flush=True)


def server_options(args: argparse.Namespace, config: Config) -> dict:
    """uvicorn's settings, one process or workers alike: the log, a short graceful stop, the peer
    address as the connection's own (auth.viewers.trusted_proxies is checked against it, and an
    X-Forwarded-For header must not stand in for it), and connections bounded in time (a head
    within server.header_timeout; an idle keep-alive connection closes)."""
    from dashboard.web.protocol import KEEP_ALIVE_TIMEOUT, http_protocol

    return {
        "log_level": args.log_level,
        "access_log": args.access_log,
        "timeout_graceful_shutdown": 5,
        "proxy_headers": False,
        "http": http_protocol(config.server.header_timeout),
        "timeout_keep_alive": KEEP_ALIVE_TIMEOUT,
    }


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from dashboard.runtime import Runtime

    # SIGHUP reloads the config once the server runs; until then it must not kill it (workers
    # started meanwhile inherit this, until they listen for it themselves).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    config = load_checked(args.config)
    if config is None:
        print("refusing to start: fix the configuration (see `dashboard check`)", file=sys.stderr)
        return 1
    host = args.host or config.server.host
    port = config.server.port if args.port is None else args.port
    if args.workers < 1:
        print("--workers must be at least 1", file=sys.stderr)
        return 2
    config = config.bound_to(host)  # what the bind opens depends on it (allowed hosts, refusals)
    if not is_loopback(host):
        problems = network_problems(config)
        for problem in problems:
            print(f"refusing to serve on {host}: {problem}", file=sys.stderr)
        if problems:
            return 2
    try:
        sock = listen_on(host, port)  # before anything starts: a port in use is said at once
    except SetupError as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 1
    raise_open_files_limit()  # before the workers start: they inherit it
    if args.workers > 1:
        return serve_workers(args, config, sock)
    try:
        runtime = Runtime(config, args.config)
    except DashboardError as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 1
    uv_config = uvicorn.Config(
        runtime.app,
        host=host,
        port=port,
        **server_options(args, config),
    )
    server = uvicorn.Server(uv_config)

    async def announce() -> None:
        while not server.started:
            await asyncio.sleep(0.05)
        _close_streams_on_exit(runtime)
        runtime.listen_for_reload(WATCH_EVERY if args.watch else None)
        bound = server.servers[0].sockets[0].getsockname() if server.servers else (host, port)
        first = f"config: {config.source}; instance {runtime.instance}"
        banner(config, bound, first, runtime.broker.describe())

    async def run() -> None:
        announcer = asyncio.create_task(announce())
        try:
            await server.serve(sockets=[sock])
        finally:
            announcer.cancel()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())
    return 0


def listen_on(host: str, port: int) -> socket.socket:
    """The server's socket, bound to `host`:`port`; SetupError saying what to do when it cannot be."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        fixes = {
            errno.EADDRINUSE: f"port {port} on {host} is in use (another server listens there): stop it, "
            "or serve on another port with --port N (--port 0 picks a free one)",
            errno.EACCES: f"port {port} needs privileges here: serve on a port above 1023 with --port N",
            errno.EADDRNOTAVAIL: f"{host} is not an address of this machine: use --host 127.0.0.1, or "
            "one of its own addresses",
        }
        raise SetupError(fixes.get(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}")) from None
    sock.set_inheritable(True)  # workers take it over
    return sock


def serve_workers(args: argparse.Namespace, config: Config, sock: socket.socket) -> int:
    """`serve --workers N`: N processes accept on one socket; they share events through Redis."""
    import uvicorn

    ReloadingWorkers = _reloading_workers()
    if not brokers.is_shared(config.broker.url):
        print(
            f"refusing to start {args.workers} workers with broker.url {config.broker.url}: each process "
            "would keep its own events (and a sqlite:// file serves one process at a time), so a "
            "browser would see only the events of the process it happened to reach, and could not "
            "resume on another one. Share them through Redis: set broker.url to redis://HOST:6379/0 "
            "(see 'Scale out' in the README).",
            file=sys.stderr,
        )
        return 2
    os.environ[WORKER_CONFIG_ENV] = os.path.abspath(args.config) if args.config else ""
    host = sock.getsockname()[0]
    os.environ[WORKER_HOST_ENV] = config.server.host
    os.environ[WORKER_WATCH_ENV] = "1" if args.watch else ""
    os.environ[WORKER_PARENT_ENV] = str(os.getpid())  # a worker whose parent is gone stops
    uv_config = uvicorn.Config(
        "dashboard.serving:worker_app",
        factory=True,
        host=host,
        port=sock.getsockname()[1],
        workers=args.workers,
        **server_options(args, config),
    )
    sock.listen(uv_config.backlog)  # connections wait in the backlog until a worker is up
    own_metrics = not os.environ.get(METRICS_DIR_ENV)
    if own_metrics:  # every worker's /metrics answers for all of them (prometheus-client's way)
        os.environ[METRICS_DIR_ENV] = tempfile.mkdtemp(prefix="dashboard-metrics-")
    banner(config, sock.getsockname(), f"config: {config.source}; {args.workers} worker processes")
    try:
        ReloadingWorkers(uv_config, sockets=[sock]).run()
    finally:
        if own_metrics:
            shutil.rmtree(os.environ[METRICS_DIR_ENV], ignore_errors=True)
    return 0


def _reloading_workers():
    """uvicorn's process manager, except that SIGHUP reloads the config in every worker rather
    than restarting them all (which would drop every stream)."""
    from prometheus_client.multiprocess import mark_process_dead
    from uvicorn.supervisors import Multiprocess

    class ReloadingWorkers(Multiprocess):
        def handle_hup(self) -> None:
            log.info("SIGHUP: each of the %d workers reloads the config", len(self.processes))
            for process in self.processes:
                if process.pid is not None:
                    os.kill(process.pid, signal.SIGHUP)

        # A worker starts with SIGHUP blocked (the mask outlives exec), so that one sent before it
        # listens waits for it instead of killing it; here, it waits until the spawn is done.
        def init_processes(self) -> None:
            with blocked(signal.SIGHUP):
                super().init_processes()

        def keep_subprocess_alive(self) -> None:
            before = {process.pid for process in self.processes}
            with blocked(signal.SIGHUP):
                super().keep_subprocess_alive()
            for pid in before - {process.pid for process in self.processes}:
                mark_process_dead(pid)  # a worker that died: its live gauges no longer count

        def handle_ttin(self) -> None:
            with blocked(signal.SIGHUP):
                super().handle_ttin()

    return ReloadingWorkers


@contextlib.contextmanager
def blocked(sig: int) -> Iterator[None]:
    """Hold `sig` pending while in the block: delivered at its end, not lost."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {sig})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})


def worker_app():
    """The app of one `serve --workers N` process (a factory uvicorn calls in each worker)."""
    from dashboard.runtime import Runtime

    quiet_client_log()
    path = os.environ.get(WORKER_CONFIG_ENV) or None
    config = load_config(path)
    config = config.bound_to(os.environ.get(WORKER_HOST_ENV) or config.server.host)
    runtime = Runtime(config, path)
    _close_streams_on_exit(runtime)
    runtime.listen_for_reload(WATCH_EVERY if os.environ.get(WORKER_WATCH_ENV) else None)
    runtime.stop_with_parent(int(os.environ.get(WORKER_PARENT_ENV) or os.getppid()))
    return runtime.app


def _close_streams_on_exit(runtime: Runtime) -> None:
    """End open streams as soon as the server is told to stop (one process or a worker): uvicorn
    would otherwise wait for them until its graceful-shutdown timeout. Called while uvicorn's own
    signal handlers are installed, which it restores when it stops."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(signum: int, frame, previous=previous) -> None:
            loop.call_soon_threadsafe(runtime.close_streams, True)
            previous(signum, frame)

        signal.signal(sig, handler)
