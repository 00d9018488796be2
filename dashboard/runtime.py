"""The composition root: builds the running server from its config (broker, feeds and their
supervisor, relay, keys, access rules, alerts, presence, the app), wires the parts together, and
owns startup and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette

from dashboard import broker as brokers
from dashboard.alerts import Alerts
from dashboard.auth import Access
from dashboard.auth.exposure import network_problems
from dashboard.backoff import Backoff
from dashboard.config import Config, TopicConfig, load_config
from dashboard.context import FeedContext
from dashboard.errors import ConfigError, ConfigIssue
from dashboard.events import Event, Message, encode_data
from dashboard.feed import Feed
from dashboard.presence import Presence
from dashboard.relay import Relay
from dashboard.relay.keys import Keys
from dashboard.relay.lifecycle import Completions
from dashboard.security import is_loopback
from dashboard.supervisor import Supervisor
from dashboard.tasks import cancel_and_wait
from dashboard.web import direct, sse
from dashboard.web.admission import Admission, stream_capacity
from dashboard.web.app import Reloadable, create_app
from dashboard.web.boards import boards
from dashboard.web.logfilter import HIDE_TOKENS
from dashboard.web.telemetry import Telemetry

log = logging.getLogger("dashboard.runtime")

PARENT_CHECK_EVERY = 1.0  # seconds between a worker's looks at whether its parent is alive
COME_BACK_MS = (250, 1250)  # the `retry:` a stream is sent when the server stops: spread over a second
RESTART_ONLY = ("host", "port", "header_timeout")  # server settings a reload cannot change (the bind)
#: what the streams of a topic a reload removed are told, before it ends (the page drops its panels)
REMOVED_STATUS = encode_data(
    {"state": "removed", "error": None, "message": "this topic was removed from the configuration"}
)


def feed_changed(old: TopicConfig, new: TopicConfig) -> bool:
    """Whether a reload must restart the topic's feed: its type or its options changed."""
    return old.feed != new.feed or old.options != new.options


def needs_restart(running: Config, loaded: Config) -> list[str]:
    """The settings of `loaded` that differ from the `running` ones and cannot change without a
    restart: the bind and the broker."""
    fixed = [
        f"server.{name}"
        for name in RESTART_ONLY
        if getattr(running.server, name) != getattr(loaded.server, name)
    ]
    return fixed + (["broker"] if running.broker != loaded.broker else [])


def keep_fixed(running: Config, loaded: Config) -> Config:
    """`loaded`, with the settings that need a restart as they are in `running`."""
    server = loaded.server.model_copy(update={name: getattr(running.server, name) for name in RESTART_ONLY})
    return loaded.model_copy(update={"server": server, "broker": running.broker})


def config_stamp(path: str | None) -> tuple[int, int] | None:
    """When the config file at `path` (None: ./config.yaml) last changed, and its size; None
    when there is none."""
    try:
        stat = Path(path or "config.yaml").stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


class Runtime:
    """What the running server is made of: config, broker, feeds and their supervisor, the relay,
    and the app that serves them (`app`, with `lifespan` as its startup and shutdown)."""

    def __init__(self, config: Config, path: str | None = None) -> None:
        self.config = config
        self.instance = f"{socket.gethostname()}:{os.getpid()}"  # which process answers (/healthz)
        self.path = path  # what a reload reads: as `serve --config` (None: ./config.yaml, else the default)
        self.generation = 1  # one more at each reload that was applied
        self.loaded_at = time.time()
        self.last_reload: dict | None = None  # when the last reload was asked, whether it applied, why not
        self._reloading = asyncio.Lock()
        self._pending: set[asyncio.Task[bool]] = set()  # reloads asked for by a signal
        self._watcher: asyncio.Task[None] | None = None
        self._orphan_watch: asyncio.Task[None] | None = None
        self.broker = brokers.from_url(
            config.broker.url,
            history=config.broker.history,
            prefix=config.broker.prefix,
            lease_ttl=config.broker.lease_ttl,
            min_replicas=config.broker.min_replicas,
        )
        backoff = Backoff(config.supervisor.initial_backoff, config.supervisor.max_backoff)
        self.supervisor = Supervisor(self.publish, backoff, leases=self.broker)
        self.heartbeat = sse.Heartbeat(config.server.keepalive)
        self.admission = Admission(stream_capacity(), config.server.max_streams_per_client)
        self.telemetry = Telemetry(self.broker, self.supervisor, self.admission)
        self.feeds: dict[str, Feed] = {}
        self.relay = Relay(config.ai)
        self.keys = Keys(config, self.broker, self.relay)
        self.completions = Completions(self.relay, self.keys)
        self.access = Access(config)
        self.boards = boards(config)
        for name, topic in config.topics.items():
            self.broker.add_topic(name, topic.history)
            self.add_feed(name, topic.make_feed(name))
        self.alerts = Alerts(config.alerts, self.broker)
        self.presence = Presence(self.broker, config.broker.lease_ttl)
        self.app = Reloadable(create_app(self))

    def add_feed(self, topic: str, feed: Feed) -> None:
        feed.attach(self.supervisor.publish, self.feed_context(feed))  # fenced from its own task
        self.feeds[topic] = feed
        self.supervisor.add(topic, feed)

    def feed_context(self, feed: Feed) -> FeedContext:
        return FeedContext(
            feed.topic,
            feed.options,
            config=self.config,
            broker=self.broker,
            relay=self.relay,
            access=self.access,
            keys=self.keys,
            completions=self.completions,
            supervisor=self.supervisor,
        )

    async def publish(self, topic: str, event: Event) -> Message:
        return await self.broker.publish(topic, event)

    def close_streams(self, restarting: bool = False) -> None:
        """Shutdown begins: end every open stream so that connections close promptly; when told
        to stop (a signal), ask each reader to come back soon, spread over a second: the server
        is most likely restarting, and a resuming reader misses nothing."""
        self.admission.stopping = True
        self.broker.close_subscriptions((lambda: random.randint(*COME_BACK_MS)) if restarting else None)

    # -- reloading -------------------------------------------------------------------------------
    def listen_for_reload(self, watch: float | None = None) -> None:
        """Reload on SIGHUP (as nginx does), and with `watch`, when the config file changes
        (checked every `watch` seconds). Called in the serving process, on its event loop."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn_reload("SIGHUP"))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # a worker starts with it blocked
        if watch:
            self._watcher = loop.create_task(self._watch(watch), name="config-watch")

    def config_status(self) -> dict:
        """The config in force, for /healthz: its generation (1 at start, one more at each
        reload applied), when it was loaded, and the last reload asked: when, whether it applied,
        and in short why not (the log has every error with file:line)."""
        return {"generation": self.generation, "loaded_at": self.loaded_at, "last_reload": self.last_reload}

    def stop_with_parent(self, parent: int) -> None:
        """Stop (as on SIGTERM) once the parent process `parent` is gone (this process is another's
        child then): a worker of `serve --workers N` whose parent was killed must not go on holding
        the port. Called on the worker's loop."""

        async def watch() -> None:
            while os.getppid() == parent:
                await asyncio.sleep(PARENT_CHECK_EVERY)
            log.warning("the parent process %d is gone: this worker stops", parent)
            signal.raise_signal(signal.SIGTERM)

        self._orphan_watch = asyncio.get_running_loop().create_task(watch(), name="parent-watch")

    def _spawn_reload(self, why: str) -> None:
        task = asyncio.get_running_loop().create_task(self.reload(reason=why), name="reload")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _watch(self, every: float) -> None:
        seen = config_stamp(self.path)
        while True:
            await asyncio.sleep(every)
            stamp = config_stamp(self.path)
            if stamp != seen:
                seen = stamp
                await self.reload(reason="the config file changed")

    async def reload(self, config: Config | None = None, *, reason: str = "asked") -> bool:
        """Read the config again (or take `config`) and apply what changed, without a restart.

        The new config is checked first: when it is invalid, or would open on this bind what it
        must not, the server goes on with the one it has and says why (the log with file:line,
        /healthz in short). Then it is applied as a diff: topics added start, topics removed end
        their streams with a `status` event that says so, a topic whose feed or options changed
        restarts that feed alone; the rest takes effect for new requests. Streams of topics that
        did not change are not touched. What needs a restart is named in the log, and kept."""
        async with self._reloading:
            try:
                loaded = config or load_config(self.path)
                new = keep_fixed(self.config, loaded)
                host = new.server.host
                problems = [] if is_loopback(host) else network_problems(new)
                if problems:
                    raise ConfigError([ConfigIssue(new.source, None, f"on {host}: {p}") for p in problems])
                feeds = {n: t.make_feed(n) for n, t in new.topics.items() if self._needs_feed(n, t)}
            except ConfigError as exc:
                error = f"{len(exc.issues)} error(s) in the config; see the server log"
                self.last_reload = {"at": time.time(), "ok": False, "error": error}
                log.error("reload (%s) refused, still serving config generation %d:", reason, self.generation)
                for issue in exc.issues:
                    log.error("  %s", issue)
                return False
            except Exception as exc:  # a feed that cannot be made: the old config goes on
                error = f"a feed could not be made: {type(exc).__name__}; see the server log"
                self.last_reload = {"at": time.time(), "ok": False, "error": error}
                log.exception(
                    "reload (%s) refused, still serving config generation %d", reason, self.generation
                )
                return False
            fixed = needs_restart(self.config, loaded)
            if fixed:
                log.warning("reload: %s changed and needs a restart: kept as it was", ", ".join(fixed))
            await self._apply(new, feeds)
            self.generation += 1
            self.loaded_at = time.time()
            self.last_reload = {"at": self.loaded_at, "ok": True, "error": None}
            log.info("reloaded the config (%s): generation %d, from %s", reason, self.generation, new.source)
            return True

    def _needs_feed(self, name: str, topic: TopicConfig) -> bool:
        """Whether a reload to `topic` starts a feed for `name`: a new topic, or a changed one."""
        running = self.config.topics.get(name)
        return running is None or feed_changed(running, topic)

    async def _apply(self, new: Config, feeds: dict[str, Feed]) -> None:
        old, self.config = self.config, new
        added = [n for n in feeds if n not in old.topics]
        changed = [n for n in feeds if n in old.topics]
        removed = [n for n in old.topics if n not in new.topics]
        # What requests read: in place, so that feeds and open handlers see it too.
        self.access.configure(new)
        self.relay.configure(new.ai)
        self.keys.configure(new)
        self.boards = boards(new)
        self.admission.per_client = new.server.max_streams_per_client
        self.heartbeat.interval = new.server.keepalive
        self.supervisor.backoff = Backoff(new.supervisor.initial_backoff, new.supervisor.max_backoff)
        await self.alerts.configure(new.alerts)
        for name in removed + changed:
            await self._stop_feed(name)
        for name in removed:
            self.broker.remove_topic(name, REMOVED_STATUS)
            log.info("reload: topic %r removed; its streams were told", name)
        for name in added:
            self.broker.add_topic(name, new.topics[name].history)
            await self.broker.topic_added(name)
        for name in new.topics:
            if name not in added:
                self.broker.set_history(name, new.topics[name].history or self.broker.default_history)
        for name in added + changed:
            self.add_feed(name, feeds[name])
            log.info(
                "reload: topic %r %s", name, "added" if name in added else "restarted (its feed changed)"
            )
        for feed in self.feeds.values():
            feed.context.config = new
        self.app.current = create_app(self)
        self.supervisor.start([*added, *changed])  # and no other: the rest run on untouched

    async def _stop_feed(self, name: str) -> None:
        await self.supervisor.remove(name)
        feed = self.feeds.pop(name)
        self.keys.remove_listener(feed)
        await asyncio.gather(feed.aclose(), return_exceptions=True)
        await feed.context.tasks.aclose()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        logging.getLogger("uvicorn.access").addFilter(HIDE_TOKENS)  # once uvicorn set up its logging
        direct.log_fast_path()
        log.info("instance %s: config %s, generation %d", self.instance, self.config.source, self.generation)
        await self.broker.connect()
        self.supervisor.start()
        self.alerts.start()
        heartbeat = asyncio.create_task(self.heartbeat.run(), name="heartbeat")
        presence = asyncio.create_task(self.presence.run(), name="presence")
        shared = self.telemetry.shared
        metrics = [asyncio.create_task(shared.run(), name="metrics")] if shared else []
        try:
            yield
        finally:
            self.close_streams()
            heartbeat.cancel()
            watchers = [task for task in (self._watcher, self._orphan_watch) if task is not None]
            await cancel_and_wait([*self._pending, *watchers])
            await cancel_and_wait([presence, *metrics])
            await self.presence.leave()
            await self.alerts.stop()
            await self.supervisor.stop()
            await asyncio.gather(*(feed.aclose() for feed in self.feeds.values()), return_exceptions=True)
            await asyncio.gather(*(feed.context.tasks.aclose() for feed in self.feeds.values()))
            await self.relay.aclose()
            await self.broker.disconnect()
