"""POST /publish/{topic}: push a JSON body onto a topic whose feed accepts pushed events."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from dashboard.auth.credentials import require_bearer
from dashboard.errors import InvalidEvent, UnknownTopic
from dashboard.events import encode_data, event_type
from dashboard.web.errors import HTTPError, read_json, require_json_type

if TYPE_CHECKING:
    from dashboard.broker import Broker
    from dashboard.config import Config
    from dashboard.feed import Feed


def describe_invalid(exc: ValueError) -> str:
    """A one-line message for a rejected body: each pydantic error as `field: problem`."""
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
    return str(exc)


async def _maybe_await(value: Any) -> Any:
    """A feed's hook may be a plain function or a coroutine function."""
    return await value if inspect.isawaitable(value) else value


class Publish:
    """POST /publish/{topic}, bound to the feeds, the publish tokens and the broker."""

    def __init__(self, feeds: dict[str, Feed], config: Config, broker: Broker) -> None:
        self.feeds = feeds
        self.tokens = [t for t in config.auth.publish_tokens if t]
        self.max_body = config.server.max_body
        self.broker = broker

    async def endpoint(self, request: Request) -> JSONResponse:
        """Check topic, then token, then read the bounded body; the feed turns it into events.

        404 unknown topic, 409 feed takes no pushes, 401 no or wrong token (or none configured),
        415 a Content-Type that is not JSON (none is read as JSON), 413 body over `server.max_body`,
        400 not JSON, 422 the feed rejected it; 202 with the ids.
        """
        topic = request.path_params["topic"]
        feed = self.feeds.get(topic)
        if feed is None:
            raise UnknownTopic(f"unknown topic {topic!r}")
        if not feed.accepts_publish:
            raise HTTPError(
                409,
                f"topic {topic!r} (feed {type(feed).__name__}) does not accept pushed events",
                "not_pushable",
            )
        if not self.tokens:
            raise HTTPError(
                401,
                "publishing is disabled: no auth.publish_tokens are configured on this server",
                "publish_disabled",
                headers={"WWW-Authenticate": "Bearer"},
            )
        require_bearer(request, self.tokens, "publishing")
        require_json_type(request)
        data = await read_json(request, self.max_body)
        try:
            events = await _maybe_await(feed.on_publish(data))
        except (ValueError, TypeError) as exc:
            raise HTTPError(422, f"rejected by feed {type(feed).__name__}: {describe_invalid(exc)}") from None
        for n, event in enumerate(events):  # all or none: an item that cannot be stored stores nothing
            try:
                event_type(event.event)
                encode_data(event.data)
            except InvalidEvent as exc:
                await _maybe_await(feed.not_published(events))
                raise HTTPError(422, f"item {n} cannot be stored: {exc}", exc.code) from None
        ids = []
        for n, event in enumerate(events):
            try:
                ids.append((await self.broker.publish(topic, event)).id)
            except BaseException:  # cancelled too: whatever was not stored is given back
                await _maybe_await(feed.not_published(events[n:]))
                raise
        return JSONResponse({"topic": topic, "ids": ids}, status_code=202)
