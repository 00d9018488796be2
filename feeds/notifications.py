"""Notifications pushed to the dashboard: `POST /publish/{topic}` and signed webhooks.

Items are `{id, title, body, level, source, url, ts}`. The webhook (`POST /feeds/{topic}/webhook`)
takes a generic JSON body, GitHub events and Prometheus Alertmanager alerts (mapped in
`feeds/_payloads.py`) and only with a valid HMAC-SHA256 signature made with the topic's
`webhook_secret` (GitHub's `X-Hub-Signature-256`, or the Standard Webhooks headers), or that
secret as a bearer token; without a secret configured it refuses every webhook. Duplicate ids are
dropped, and so are a Standard Webhooks message seen before (its `webhook-id`) and a GitHub body seen
before (whatever its `X-GitHub-Delivery`, which the signature does not cover).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from datetime import datetime
from typing import Any, Literal
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dashboard import Event, Feed
from dashboard.http import (
    HTTPError,
    bearer_token,
    describe_invalid,
    hmac_key,
    hub_signature_matches,
    media_type,
    parse_count,
    parse_json,
    read_body,
    require_json_type,
    standard_signature_matches,
    token_in,
)
from feeds._payloads import (
    BODY_MAX,
    TITLE_MAX,
    URL_MAX,
    from_alertmanager,
    from_generic,
    from_github,
    is_alertmanager,
    json_objects,
)

Level = Literal["info", "success", "warning", "error"]
LEVEL_ALIASES = {
    "information": "info",
    "notice": "info",
    "debug": "info",
    "ok": "success",
    "resolved": "success",
    "warn": "warning",
    "err": "error",
    "critical": "error",
    "fatal": "error",
    "failure": "error",
}
SIGNATURE_HEADER = "X-Hub-Signature-256"
FORM = "application/x-www-form-urlencoded"
MAX_TS = 8.64e12  # seconds: the range of a JavaScript Date, so every page can show the time


class Notification(BaseModel):
    """One notification item, as published on the topic."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=200)
    title: str = Field(min_length=1, max_length=TITLE_MAX)
    body: str = Field("", max_length=BODY_MAX)
    level: Level = "info"
    source: str = Field("api", max_length=100)
    url: str | None = Field(None, max_length=URL_MAX)
    ts: float = Field(
        default_factory=lambda: round(time.time(), 3),
        allow_inf_nan=False,
        ge=-MAX_TS,
        le=MAX_TS,
        description="seconds since the epoch (within what a browser's Date holds)",
    )

    @field_validator("level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            return LEVEL_ALIASES.get(value, value)
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith(("http://", "https://")):
            raise ValueError("url must be an http:// or https:// link")
        return value

    @field_validator("ts", mode="before")
    @classmethod
    def _ts(cls, value: Any) -> Any:
        """Epoch seconds, or an ISO 8601 time (`2024-05-01T12:00:00Z`)."""
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError("ts must be seconds since the epoch or an ISO 8601 time") from None
            return parsed.timestamp() if parsed.tzinfo else parsed.astimezone().timestamp()
        return value


def form_payload(body: bytes) -> bytes:
    """The `payload` field of a form-encoded body (400 when there is none)."""
    try:
        fields = parse_qs(body.decode(), strict_parsing=True)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"invalid form body: {exc}") from None
    if "payload" not in fields:
        raise HTTPError(400, "a form-encoded webhook body must have a `payload` field holding the JSON")
    return fields["payload"][0].encode()


class Notifications(Feed):
    """Notification items pushed by POST /publish/{topic} or signed webhooks (GitHub, Alertmanager)."""

    default_view = "list"
    accepts_publish = True

    class Options(Feed.Options):
        webhook_secret: SecretStr | None = Field(
            None, description="HMAC-SHA256 secret for POST /feeds/{topic}/webhook; unset or empty: refused"
        )
        dedupe_seconds: float = Field(
            86_400, gt=0, description="an id seen within this many seconds is dropped as a duplicate"
        )
        webhook_tolerance: float = Field(
            300,
            gt=0,
            description="Standard Webhooks: seconds a webhook-timestamp may be from this server's clock",
        )

        @field_validator("webhook_secret", mode="before")
        @classmethod
        def _empty_is_none(cls, value: Any) -> Any:
            return None if value == "" else value

        @field_validator("webhook_secret")
        @classmethod
        def _decodable(cls, value: SecretStr | None) -> SecretStr | None:
            if value is not None:
                hmac_key(value.get_secret_value())  # ValueError saying what is wrong
            return value

    # -- intake --------------------------------------------------------------------------------
    async def on_publish(self, data: Any) -> list[Event]:
        """A notification object or a list of them, validated strictly (unknown keys are errors)."""
        return await self.fresh_events([Notification.model_validate(obj) for obj in json_objects(data)])

    async def fresh_events(self, items: list[Notification]) -> list[Event]:
        """Events for the items whose id was not seen recently, on any instance (nor earlier in
        `items`)."""
        return [
            Event(data=item.model_dump())
            for item in items
            if await self.claim(f"id:{item.id}", self.options.dedupe_seconds)
        ]

    async def not_published(self, events: list[Event]) -> None:
        for event in events:  # so that the sender's retry is not taken for a duplicate
            await self.unclaim(f"id:{event.data['id']}")

    # -- webhook -------------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        return [Route("/webhook", self.webhook, methods=["POST"])]

    def check_credentials(self, request: Request) -> bytes:
        """The secret, once the request carries a signature or the right bearer token (401 otherwise);
        403 when no secret is configured, so unsigned webhooks are never accepted."""
        if self.options.webhook_secret is None:
            raise HTTPError(
                403,
                f"webhooks are disabled for topic {self.topic!r}: set its webhook_secret option",
                "webhook_disabled",
            )
        secret = self.options.webhook_secret.get_secret_value().encode()
        if request.headers.get(SIGNATURE_HEADER) is not None or "webhook-signature" in request.headers:
            return secret
        token = bearer_token(request)
        if token is None:
            raise HTTPError(
                401,
                f"webhook requires an {SIGNATURE_HEADER} header (sha256=<HMAC-SHA256 of the body "
                "with the topic's webhook_secret>), the Standard Webhooks headers (webhook-id, "
                "webhook-timestamp, webhook-signature) or 'Authorization: Bearer <webhook_secret>'",
            )
        if not token_in(token, [secret.decode()]):
            raise HTTPError(401, "invalid webhook token")
        return secret

    def check_standard_webhook(self, request: Request, body: bytes) -> str | None:
        """The `webhook-id` of a Standard Webhooks message whose timestamp is within
        `webhook_tolerance` and one of whose `v1` signatures matches; None without those headers.
        400 when a header is missing or malformed, 401 when the timestamp or signature is not."""
        signatures = request.headers.get("webhook-signature")
        if signatures is None:
            return None
        msg_id = request.headers.get("webhook-id", "")
        raw_timestamp = request.headers.get("webhook-timestamp", "")
        if not msg_id or not raw_timestamp:
            raise HTTPError(400, "webhook-signature needs the webhook-id and webhook-timestamp headers")
        timestamp = parse_count(raw_timestamp, "webhook-timestamp")
        tolerance = self.options.webhook_tolerance
        skew = time.time() - timestamp
        if abs(skew) > tolerance:
            raise HTTPError(
                401,
                f"webhook-timestamp is {abs(skew):.0f} s {'old' if skew > 0 else 'in the future'}: "
                f"outside the tolerance of {tolerance:g} s (a replayed or delayed message)",
                "stale_timestamp",
            )
        assert self.options.webhook_secret is not None
        key = hmac_key(self.options.webhook_secret.get_secret_value())
        if not standard_signature_matches(key, msg_id, timestamp, body, signatures):
            raise HTTPError(401, "no webhook-signature matches the message", "bad_signature")
        return msg_id

    async def webhook(self, request: Request) -> JSONResponse:
        """POST /feeds/{topic}/webhook: verify, parse, map to items, drop duplicates, publish."""
        secret = self.check_credentials(request)
        require_json_type(request, FORM)  # form-encoded: GitHub's other content type, curl's default
        body = await read_body(request, self.context.config.server.max_body)
        signature = request.headers.get(SIGNATURE_HEADER)
        if signature is not None and not hub_signature_matches(secret, body, signature):
            raise HTTPError(401, f"{SIGNATURE_HEADER} does not match the body", "bad_signature")
        msg_id = self.check_standard_webhook(request, body)
        if msg_id is None:
            return await self.accept(request, body)
        # A message is taken once, on any instance; a replay gets a 2xx (the sender's retry after
        # a lost answer stops) and publishes nothing.
        if not await self.claim(f"webhook-id:{msg_id}", self.options.dedupe_seconds):
            return JSONResponse(
                {"topic": self.topic, "ids": [], "notifications": [], "duplicates": 0, "replayed": True},
                status_code=202,
            )
        try:
            return await self.accept(request, body)
        except BaseException:  # not taken after all: the sender's retry must not be a replay
            await self.unclaim(f"webhook-id:{msg_id}")
            raise

    async def accept(self, request: Request, body: bytes) -> JSONResponse:
        """Parse a verified webhook body, map it to items, drop duplicates, publish: 202."""
        # GitHub signs the body only, not X-GitHub-Delivery: the same body under another delivery
        # id is the same delivery sent again (by whoever saw it), so the body is taken once too.
        body_key = f"github-body:{hashlib.sha256(body).hexdigest()}"
        if media_type(request) == FORM and not body.lstrip().startswith((b"{", b"[")):
            # GitHub's other content type: the JSON in a `payload` field. (A JSON body sent
            # with curl's default form type is read as the JSON it is.)
            body = form_payload(body)
        payload = parse_json(body)
        github_event = request.headers.get("x-github-event")
        try:
            if github_event:
                mapped = from_github(github_event, request.headers.get("x-github-delivery"), payload)
            elif is_alertmanager(payload):
                mapped = from_alertmanager(payload)
            else:
                mapped = from_generic(payload)
            items = [Notification.model_validate(item) for item in mapped]
        except ValueError as exc:
            raise HTTPError(422, f"cannot read the webhook payload: {describe_invalid(exc)}") from None
        except (AttributeError, TypeError, KeyError, IndexError):
            # A signed payload whose fields have other types than the sender's documents say.
            kind = f"GitHub {github_event!r}" if github_event else "webhook"
            raise HTTPError(422, f"cannot read the {kind} payload: a field has an unexpected type") from None
        published: list[tuple[Event, int]] = []
        if not github_event or await self.claim(body_key, self.options.dedupe_seconds):
            try:
                published = await self.publish_fresh(items)
            except BaseException:  # not taken after all: the sender's retry must not be a duplicate
                if github_event:
                    await self.unclaim(body_key)
                raise
        return JSONResponse(
            {
                "topic": self.topic,
                "ids": [event_id for _, event_id in published],
                "notifications": [event.data["id"] for event, _ in published],
                "duplicates": len(items) - len(published),
            },
            status_code=202,
        )

    async def publish_fresh(self, items: list[Notification]) -> list[tuple[Event, int]]:
        """Publish the items not seen recently: each event with its id."""
        events = await self.fresh_events(items)
        ids = []
        for n, event in enumerate(events):
            try:
                ids.append((await self.publish(event)).id)
            except BaseException:  # cancelled too: whatever was not stored is given back
                await self.not_published(events[n:])
                raise
        return list(zip(events, ids, strict=True))
