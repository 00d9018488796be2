"""The `dashboard` command: its parser, and check, reload, feeds, token, keys (serve is in
serving.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

import psutil

from dashboard import __version__
from dashboard import broker as brokers
from dashboard.auth import Access
from dashboard.auth.exposure import network_problems
from dashboard.auth.ttl import parse_ttl
from dashboard.config import APIKey, Config
from dashboard.errors import DashboardError
from dashboard.feed import installed_feeds, load_target
from dashboard.security import is_loopback
from dashboard.serving import cmd_serve, load_checked, quiet_client_log

if TYPE_CHECKING:
    pass

log = logging.getLogger("dashboard")


def cmd_check(args: argparse.Namespace) -> int:
    config = load_checked(args.config)
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
    config = load_checked(args.config)
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
    config = load_checked(args.config)
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

    config = load_checked(args.config)
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


class LineFormatter(logging.Formatter):
    """logging's own Formatter, its asctime's date and time made once a second (time.strftime is
    most of a line's formatting, and a relayed completion logs a line)."""

    stamp: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second, stamp = int(record.created), self.stamp  # read once: the handler's lock is not ours
        if second != stamp[0]:
            stamp = self.stamp = (second, time.strftime(self.default_time_format, self.converter(second)))
        return self.default_msec_format % (stamp[1], record.msecs)


def main(argv: list[str] | None = None) -> int:
    # Feeds named by dotted path may live in the folder the command is started from.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    args = build_parser().parse_args(argv)
    if getattr(args, "config_path", None):
        if args.config:
            build_parser().error("give the config either as an argument or with --config, not both")
        args.config = args.config_path
    before = list(logging.getLogger().handlers)
    logging.basicConfig(level=getattr(args, "log_level", "info").upper())
    for handler in logging.getLogger().handlers:
        if handler not in before:  # the one basicConfig made (none when the root has handlers)
            handler.setFormatter(LineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Nothing of the caller, thread or process is logged: not looked up for each line either (the
    # logging HOWTO's "Optimization"; a relayed completion logs a line).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    quiet_client_log()
    return args.func(args)
