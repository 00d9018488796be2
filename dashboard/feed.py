"""The Feed base class, and where feed types come from: built-ins, entry points, dotted paths."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict
from starlette.routing import BaseRoute

from dashboard.errors import FeedNotFound
from dashboard.events import Event

if TYPE_CHECKING:
    from dashboard.context import FeedContext

ENTRY_POINT_GROUP = "dashboard.feeds"
BUILTIN_PACKAGE = "feeds"


class Feed:
    """Base class of every feed: subclass it, declare `Options`, implement `stream()`.

    A feed may also take pushed events (`accepts_publish`, `on_publish`) and expose HTTP routes
    under `/feeds/{topic}/` (`routes()`); `publish()` puts an event on the feed's own topic.
    """

    class Options(BaseModel):
        """Options from the topic's `options:` in the config; unknown keys are errors."""

        model_config = ConfigDict(extra="forbid")

    #: the panel view the dashboard uses for this feed unless the config says otherwise
    default_view: ClassVar[str] = "json"
    #: SSE event types this feed emits besides `message` and `status` (the page listens for them)
    event_types: ClassVar[tuple[str, ...]] = ()
    #: whether `POST /publish/{topic}` may push events to a topic of this feed
    accepts_publish: ClassVar[bool] = False

    def __init__(self, topic: str, options: Options | dict[str, Any] | None = None) -> None:
        self.topic = topic
        self.options = (
            options if isinstance(options, self.Options) else self.Options.model_validate(options or {})
        )
        self._publish: Callable[[str, Event], Awaitable[Any]] | None = None
        #: the running server as this feed sees it (see dashboard.context); set before it runs
        self.context: FeedContext = None  # type: ignore[assignment]

    @classmethod
    def description(cls) -> str:
        """The first line of the class docstring."""
        doc = inspect.getdoc(cls) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    @classmethod
    def has_stream(cls) -> bool:
        """False for push-only feeds, which leave `stream()` as it is."""
        return cls.stream is not Feed.stream

    async def stream(self) -> AsyncIterator[Event]:
        """The feed's events; runs under supervision, restarted with backoff if it raises."""
        return
        yield

    async def publish(self, event: Event) -> Any:
        """Publish `event` on this feed's topic now (from a route or a push)."""
        if self._publish is None:
            raise RuntimeError(f"feed for topic {self.topic!r} is not attached to a server")
        return await self._publish(self.topic, event)

    async def on_publish(self, data: Any) -> list[Event]:
        """The events a `POST /publish/{topic}` body becomes (only when `accepts_publish`); a plain
        `def` works too. Raise ValueError to refuse the body (422)."""
        return [Event(data=data)]

    async def not_published(self, events: list[Event]) -> None:
        """Called with the events from `on_publish` that could not be stored (the broker was down
        and the client got a 503): forget anything remembered about them, so a retry is taken."""

    async def claim(self, key: str, ttl: float) -> bool:
        """True the first time `key` is claimed on this topic within `ttl` seconds, on any instance
        sharing the broker: what a feed uses to drop duplicates. `unclaim` takes it back."""
        return await self.context.claim(key, ttl)

    async def unclaim(self, key: str) -> None:
        await self.context.unclaim(key)

    @classmethod
    def config_problems(cls, options: Options, config: Any) -> list[str]:
        """What is wrong with `options` given the rest of the config (`dashboard check` reports it)."""
        return []

    def routes(self) -> list[BaseRoute]:
        """Starlette routes served under `/feeds/{topic}/`."""
        return []

    async def aclose(self) -> None:
        """Called once when the server stops: end any task the feed's routes started."""

    def attach(
        self, publish: Callable[[str, Event], Awaitable[Any]], context: FeedContext | None = None
    ) -> None:
        """Called by the server before the feed runs."""
        self._publish = publish
        self.context = context


@dataclass(frozen=True)
class FeedType:
    """An installed feed type and where it came from."""

    name: str
    origin: str  # "built-in", "entry point" or "path"
    target: str  # what is imported: "feeds.demo" or "pkg.module:Class"

    def load(self) -> type[Feed]:
        return load_target(self.target)


def load_target(target: str) -> type[Feed]:
    """Import a feed class from `pkg.module:Class`, or the one Feed subclass of module `pkg.module`."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FeedNotFound(f"cannot import {module_name!r}: {exc}") from exc
    if attr:
        cls = getattr(module, attr, None)
        if cls is None:
            raise FeedNotFound(f"module {module_name!r} has no attribute {attr!r}")
    else:
        found = [
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj) and issubclass(obj, Feed) and obj.__module__ == module.__name__
        ]
        if len(found) != 1:
            raise FeedNotFound(f"module {module_name!r} must define exactly one Feed subclass")
        cls = found[0]
    if not (inspect.isclass(cls) and issubclass(cls, Feed)):
        raise FeedNotFound(f"{target!r} is not a subclass of dashboard.Feed")
    return cls


def installed_feeds() -> dict[str, FeedType]:
    """Built-in feeds (modules of the `feeds` package) and entry points, by name."""
    found: dict[str, FeedType] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = FeedType(ep.name, "entry point", ep.value)
    package = importlib.import_module(BUILTIN_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            found[info.name] = FeedType(info.name, "built-in", f"{BUILTIN_PACKAGE}.{info.name}")
    return dict(sorted(found.items()))


def resolve_feed(name: str) -> type[Feed]:
    """The feed class for a config's `feed:` value: a built-in or entry-point name, or a dotted path."""
    if ":" in name:
        return load_target(name)
    known = installed_feeds()
    if name not in known:
        raise FeedNotFound(
            f"unknown feed type {name!r}; known: {', '.join(known) or 'none'} "
            "(or give a dotted path, package.module:Class)"
        )
    return known[name].load()
