"""The `dashboard` command: serve, reload, check, feeds, token, keys."""

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
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

import psutil

from dashboard import __version__
from dashboard import broker as brokers
from dashboard.auth import Access
from dashboard.auth.exposure import describe as describe_access
from dashboard.auth.exposure import network_problems
from dashboard.auth.ttl import parse_ttl
from dashboard.config import APIKey, Config, load_config
from dashboard.errors import ConfigError, DashboardError, SetupError
from dashboard.feed import installed_feeds, load_target
from dashboard.security import is_loopback

if TYPE_CHECKING:
    from dashboard.runtime import Runtime

log = logging.getLogger("dashboard")


def _load(path: str | None) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{len(exc.issues)} error(s) in the configuration:", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
            for line in issue.excerpt.splitlines():
                print(f"      {line}", file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    if not is_loopback(config.server.host):
        problems = network_problems(config)
        for problem in problems:
            print(f"{config.source}: serve would refuse server.host {config.server.host}: {problem}")
        if problems:
            return 1
    for warning in config.warnings():
        print(f"{config.source}: warning: {warning}")
    print(f"{config.source}: OK, {len(config.topics)} topic(s): {', '.join(config.topics) or 'none'}")
    return 0


def cmd_feeds(args: argparse.Namespace) -> int:
    for name, feed_type in installed_feeds().items():
        try:
            description = load_target(feed_type.target).description()
        except DashboardError as exc:
            description = f"(cannot load: {exc})"
        print(f"{name:<16} {feed_type.origin:<12} {description}")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    try:
        ttl = parse_ttl(args.ttl)
        topics = [t.strip() for t in args.topics.split(",") if t.strip()]
        if not topics:
            raise ValueError("--topics names no topic pattern")
        token = Access(config).mint(topics, ttl, args.sub)
    except ValueError as exc:
        print(f"cannot make a token: {exc}", file=sys.stderr)
        return 2
    unmatched = [p for p in topics if not any(fnmatchcase(t, p) for t in config.topics)]
    if unmatched:
        print(f"note: no configured topic matches {', '.join(unmatched)}", file=sys.stderr)
    print(token)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    try:
        report = asyncio.run(_spend_today(config))
    except (DashboardError, OSError, ValueError) as exc:
        print(f"cannot read today's spend: {exc}", file=sys.stderr)
        return 1
    print(f"AI spend on {report['day']} (UTC): {report['requests']} request(s), {report['cost_usd']:.6f} USD")
    keys = {key.name: key for key in config.auth.api_keys}
    spent = report["keys"]
    for name in [*keys, *sorted(set(spent) - set(keys))]:  # configured keys, then other accounts
        print("  " + describe_key(name, spent.get(name, {}), keys.get(name)))
    return 0


def describe_key(name: str, spent: dict, key: APIKey | None) -> str:
    """One line of `dashboard keys`: a key's (or another account's) usage today and its limits."""
    tokens = spent.get("prompt_tokens", 0) + spent.get("completion_tokens", 0)
    line = f"{name:<20} {spent.get('requests', 0)} req, {tokens} tokens, {spent.get('cost_usd', 0.0):.6f} USD"
    if spent.get("held_usd"):
        line += f" (+{spent['held_usd']:.6f} held in flight)"
    limits = [] if key is None else [("rpm", key.rpm), ("tpm", key.tpm), ("daily_usd", key.daily_usd)]
    return line + "; " + (", ".join(f"{n} {v}" for n, v in limits if v is not None) or "no limits")


async def _spend_today(config: Config) -> dict:
    """Today's spend report: from a shared (Redis) broker directly; with one that is not shared
    (memory://, or sqlite://, whose file the running server holds), from its spend topic."""
    from dashboard.relay.keys import spend_report
    from dashboard.relay.ledger import Ledger

    if not brokers.is_shared(config.broker.url):
        return await _spend_from_server(config)
    broker = brokers.from_url(config.broker.url, prefix=config.broker.prefix)
    await broker.connect()
    try:
        return spend_report(await Ledger(broker).spend(), None, None)
    finally:
        await broker.disconnect()


async def _spend_from_server(config: Config) -> dict:
    import json

    import httpx

    topics = [name for name, topic in config.topics.items() if topic.feed == "spend"]
    if not topics:
        scheme = config.broker.url.partition(":")[0]
        raise ValueError(
            f"broker.url {scheme}:// is not shared, so the running server holds the spend; "
            "add a topic with feed: spend"
        )
    url = f"{local_url(config)}/sse/{topics[0]}?replay=1"
    headers = {}
    viewers = config.auth.viewers
    if viewers is not None and viewers.secret is not None and not config.topics[topics[0]].public:
        # a private topic: read it as a viewer of that topic alone, for a minute
        headers["Authorization"] = f"Bearer {Access(config).mint([topics[0]], 60, 'dashboard keys')}"
    client = httpx.AsyncClient(timeout=10, headers=headers)
    async with client, client.stream("GET", url) as response:
        if response.status_code in (401, 403):
            raise ValueError(
                f"{url} answered {response.status_code}: topic {topics[0]!r} is private and this config "
                "cannot sign a viewer token for it (no auth.viewers.secret); make it public: true"
            )
        if response.status_code != 200:
            raise ValueError(f"{url} answered {response.status_code}")
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                return json.loads(line[5:])
    raise ValueError(f"{url} sent no spend report")


def local_url(config: Config, port: int | None = None) -> str:
    """Where this machine reaches the server of `config` (on `port`, when not server.port)."""
    host = config.server.host if config.server.host not in ("0.0.0.0", "::") else "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{port or config.server.port}"


def cmd_reload(args: argparse.Namespace) -> int:
    """`dashboard reload`: check the config, signal the server, and wait for it to say how it went."""
    import time

    config = _load(args.config)
    if config is None:
        print("not reloading: the server would refuse this config and keep the one it has", file=sys.stderr)
        return 1
    try:
        pid = args.pid or server_pid(args.port or config.server.port)
        port = args.port or listening_port(pid) or config.server.port
    except (LookupError, psutil.Error) as exc:
        print(exc, file=sys.stderr)
        return 1
    url = f"{local_url(config, port)}/healthz"
    before = _config_status(url)
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + args.timeout
    while before is not None and time.monotonic() < deadline:
        time.sleep(0.1)
        status = _config_status(url)
        if status is None or status.get("last_reload") == before.get("last_reload"):
            continue
        if status["last_reload"]["ok"]:
            print(f"reloaded: process {pid} serves config generation {status['generation']}")
            return 0
        print(
            f"reload refused, the server keeps its config: {status['last_reload']['error']}", file=sys.stderr
        )
        return 1
    print(f"sent SIGHUP to process {pid}; it did not say how the reload went: see its log", file=sys.stderr)
    return 1


def server_pid(port: int) -> int:
    """The process of this user that listens on `port` (with `--workers N`, their parent);
    LookupError saying why there is none."""
    listening = {
        c.pid
        for c in psutil.net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
    }

    def serving(process: psutil.Process | None) -> bool:  # `python -m dashboard serve`, `dashboard serve`
        words = process.cmdline() if process is not None else []
        return "serve" in words and any(os.path.basename(word) == "dashboard" for word in words)

    for pid in sorted(listening):
        process = psutil.Process(pid)
        if serving(process.parent()):  # a worker of `serve --workers N`: its parent relays SIGHUP
            return process.parent().pid
        if serving(process):
            return pid
    if listening:
        raise LookupError(f"process {min(listening)} listens on port {port} but is no dashboard server")
    raise LookupError(f"no process of this user listens on port {port}: give --port or --pid")


def listening_port(pid: int) -> int | None:
    """The port process `pid` (or, for the parent of `serve --workers N`, its workers) listens on."""
    process = psutil.Process(pid)
    for each in (process, *process.children()):
        ports = [c.laddr.port for c in each.net_connections("inet") if c.status == psutil.CONN_LISTEN]
        if ports:
            return ports[0]
    return None


def _config_status(url: str) -> dict | None:
    """The `config` part of the server's /healthz; None when it does not answer with one."""
    import httpx

    try:
        return httpx.get(url, timeout=2).json().get("config")
    except (httpx.HTTPError, ValueError, AttributeError):
        return None


WORKER_CONFIG_ENV = "DASHBOARD_WORKER_CONFIG"  # how `serve --workers N` tells its workers the config
WORKER_HOST_ENV = "DASHBOARD_WORKER_HOST"  # ... and the address they serve on
WORKER_WATCH_ENV = "DASHBOARD_WORKER_WATCH"  # ... and whether they watch the config file
WORKER_PARENT_ENV = "DASHBOARD_WORKER_PARENT"  # ... and the process they must not outlive
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # where workers keep the metrics they share
WATCH_EVERY = 1.0  # seconds between looks at the config file under `serve --watch`


def banner(config: Config, bound: tuple, first: str, events: str = "") -> None:
    """The startup lines: the URL, the config, where events are kept, the topics, what is open to
    whom, and the limits."""
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
    for warning in config.warnings():
        print(f"  warning: {warning}", flush=True)


def bounded_connections(config: Config) -> dict:
    """uvicorn settings that bound how long a connection is held without a request: a head must
    arrive within server.header_timeout, and an idle keep-alive connection closes."""
    from dashboard.web.protocol import KEEP_ALIVE_TIMEOUT, http_protocol

    return {
        "http": http_protocol(config.server.header_timeout),
        "timeout_keep_alive": KEEP_ALIVE_TIMEOUT,
    }


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from dashboard.runtime import Runtime

    # SIGHUP reloads the config once the server runs; until then it must not kill it (workers
    # started meanwhile inherit this, until they listen for it themselves).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    config = _load(args.config)
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
    if args.workers > 1:
        return serve_workers(args, config, sock)
    from dashboard.web.admission import raise_open_files_limit

    raise_open_files_limit()
    try:
        runtime = Runtime(config, args.config)
    except DashboardError as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 1
    uv_config = uvicorn.Config(
        runtime.app,
        host=host,
        port=port,
        log_level=args.log_level,
        timeout_graceful_shutdown=5,
        access_log=args.access_log,
        # The peer address stays the connection's own: auth.viewers.trusted_proxies is checked
        # against it, and an X-Forwarded-For header must not be able to stand in for it.
        proxy_headers=False,
        **bounded_connections(config),
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
        "dashboard.cli:worker_app",
        factory=True,
        host=host,
        port=sock.getsockname()[1],
        workers=args.workers,
        log_level=args.log_level,
        timeout_graceful_shutdown=5,
        access_log=args.access_log,
        proxy_headers=False,  # as in a single process: the peer is who connected
        **bounded_connections(config),
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
    from dashboard.web.admission import raise_open_files_limit

    raise_open_files_limit()
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dashboard", description="A real-time dashboard server with pluggable feeds."
    )
    parser.add_argument("--version", action="version", version=f"sse-dashboard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config_help = "config file (default: ./config.yaml, else the built-in offline default)"
    serve = sub.add_parser(
        "serve", help="serve the dashboard", description="Serve the dashboard and its feeds."
    )
    serve.add_argument("--config", metavar="PATH", help=config_help)
    serve.add_argument("config_path", nargs="?", metavar="CONFIG", help="the same as --config")
    serve.add_argument("--host", help="address to listen on (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: server.port, 8000; 0 picks one)")
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve.add_argument("--access-log", action="store_true", help="log every HTTP request")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="processes sharing the port (default 1); more than one needs a redis:// broker",
    )
    serve.add_argument(
        "--watch", action="store_true", help="reload the config when its file changes (as SIGHUP does)"
    )
    serve.set_defaults(func=cmd_serve)

    reload = sub.add_parser(
        "reload",
        help="reload the running server's config",
        description="Check the config, then have the server that listens on its port (or --pid) reload "
        "it without a restart, as `kill -HUP <pid>` does; wait until the server says it applied it.",
    )
    reload.add_argument("--config", metavar="PATH", help=config_help)
    reload.add_argument("config_path", nargs="?", metavar="CONFIG", help="the same as --config")
    reload.add_argument("--port", type=int, help="the port the server listens on (default: server.port)")
    reload.add_argument("--pid", type=int, help="the server's process id (default: found by its port)")
    reload.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server (10)")
    reload.set_defaults(func=cmd_reload)

    check = sub.add_parser(
        "check",
        help="validate a config",
        description="Validate a config: exit 0, or print every error with file:line and exit 1.",
    )
    check.add_argument("--config", metavar="PATH", help=config_help)
    check.add_argument("config_path", nargs="?", metavar="CONFIG", help="the same as --config")
    check.set_defaults(func=cmd_check)

    token = sub.add_parser(
        "token",
        help="print a viewer token",
        description="Print a viewer token (JWT) signed with auth.viewers.secret; open the dashboard "
        "with /?token=<it>, or send it as 'Authorization: Bearer' or ?token= to /sse and /api.",
    )
    token.add_argument("--config", metavar="PATH", help=config_help)
    token.add_argument("--topics", required=True, help="topic patterns it may read: 'cpu,ci.*' ('*': all)")
    token.add_argument("--ttl", default="8h", help="how long it is valid: 90s, 15m, 8h, 7d (default 8h)")
    token.add_argument("--sub", help="who it is for (shown on the page; the `sub` claim)")
    token.set_defaults(func=cmd_token)

    keys = sub.add_parser(
        "keys",
        help="print each api key's usage today",
        description="Print each api key's requests, tokens and spend today (UTC) and its limits: read from "
        "a redis:// broker, or with memory:// or sqlite:// from the running server's spend topic.",
    )
    keys.add_argument("--config", metavar="PATH", help=config_help)
    keys.set_defaults(func=cmd_keys)

    feeds = sub.add_parser(
        "feeds", help="list installed feed types", description="List the installed feed types."
    )
    feeds.set_defaults(func=cmd_feeds)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Feeds named by dotted path may live in the folder the command is started from.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    args = build_parser().parse_args(argv)
    if getattr(args, "config_path", None):
        if args.config:
            build_parser().error("give the config either as an argument or with --config, not both")
        args.config = args.config_path
    logging.basicConfig(
        level=getattr(args, "log_level", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    quiet_client_log()
    return args.func(args)


def quiet_client_log() -> None:
    """httpx logs every request at INFO; the relay logs one line per completion instead."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
