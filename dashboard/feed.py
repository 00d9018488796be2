"""The Feed base class, and how a config's `feed:` names one: a built-in or entry-point name
(dashboard.plugins.FEEDS), or a dotted path."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict
from starlette.routing import BaseRoute

from dashboard.errors import FeedNotFound, did_you_mean
from dashboard.events import Event
from dashboard.plugins import FEEDS, Plugin

if TYPE_CHECKING:
    from dashboard.context import FeedContext


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


def load_target(target: str) -> type[Feed]:
    """Import a feed class from `pkg.module:Class`, or the one Feed subclass of module `pkg.module`."""
    try:
        return FEEDS.load_target(target)
    except ImportError as exc:
        raise FeedNotFound(f"cannot import {target.partition(':')[0]!r}: {exc}") from exc
    except AttributeError as exc:
        raise FeedNotFound(str(exc)) from None
    except TypeError as exc:
        if str(exc).startswith("module "):
            raise FeedNotFound(str(exc)) from None
        raise FeedNotFound(f"{target!r} is not a subclass of dashboard.Feed") from None


def installed_feeds() -> dict[str, Plugin]:
    """Built-in feeds (modules of the `feeds` package) and entry points, by name."""
    return FEEDS.plugins()


def resolve_feed(name: str) -> type[Feed]:
    """The feed class for a config's `feed:` value: a built-in or entry-point name, or a dotted path."""
    if ":" in name:
        return load_target(name)
    known = installed_feeds()
    if name not in known:
        raise FeedNotFound(
            f"unknown feed type {name!r}{did_you_mean(name, known)}; known: {', '.join(known) or 'none'} "
            "(or give a dotted path, package.module:Class)"
        )
    return load_target(known[name].target)
