"""Named api keys: who a completion is charged to, and the limits and budget it is admitted under.

`admit()` reserves a request's estimated tokens and cost in the ledger (ledger.py), atomically (and
shared by every instance when the broker is shared), or refuses it (403: a model the key may not
use; 429: a limit, with Retry-After); `settle()` replaces the reservation with what the request
used (the provider's usage, else an estimate from the text relayed), counts it in the metrics and
publishes the day's spend to the `spend` feeds. Plain `auth.api_tokens` and an open relay are
charged to an account with no limits.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import math
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from dashboard.broker import Broker
from dashboard.errors import BrokerUnavailable, HTTPError
from dashboard.events import Event
from dashboard.relay.ledger import DAY, NANO, Ledger, Limits, Refusal, Reservation
from dashboard.relay.metrics import Measure, labelled
from dashboard.security import token_in
from dashboard.tasks import finish_shielded

if TYPE_CHECKING:
    from dashboard.config import APIKey, Config
    from dashboard.relay.upstream import Relay

log = logging.getLogger("dashboard.relay.keys")

CHARS_PER_TOKEN = 4  # the estimate when a provider reports no usage
NO_KEY = "(no key)"  # plain api_tokens, or no auth at all
PAGE = "(page)"  # prompts from the page with no viewer name and no page key

NO_LIMITS = Limits()

REQUESTS = Counter(
    "dashboard_ai_key_requests", "Completions settled per api key (by name) and outcome", ["key", "outcome"]
)
TOKENS = Counter(
    "dashboard_ai_key_tokens", "Tokens used per api key (by name), prompt or completion", ["key", "kind"]
)
COST = Counter("dashboard_ai_key_cost_usd", "Spend per api key (by name), in US dollars", ["key"])
REFUSED = Counter(
    "dashboard_ai_key_refused",
    "Requests refused per api key (by name): rpm, tpm, budget, model",
    ["key", "reason"],
)


@dataclass(frozen=True)
class Account:
    """What a request is charged to: a name (never a token) and the limits it is held to."""

    name: str
    limits: Limits = NO_LIMITS
    models: tuple[str, ...] = ("*",)
    default_max_tokens: int = 1024

    def allows(self, model: str) -> bool:
        return any(fnmatchcase(model, pattern) for pattern in self.models)


def account_of(key: APIKey, name: str | None = None) -> Account:
    daily = None if key.daily_usd is None else round(key.daily_usd * NANO)
    return Account(
        name or key.name, Limits(key.rpm, key.tpm, daily), tuple(key.models), key.default_max_tokens
    )


@dataclass
class Ticket:
    """An admitted request: its reservation, and its body for the prompt's estimate (used when no
    usage comes; made when first asked for, which a request with no limits leaves until it ends)."""

    reservation: Reservation
    body: dict[str, Any]
    prompt: int | None = None

    @property
    def prompt_tokens(self) -> int:
        if self.prompt is None:
            self.prompt = prompt_tokens(self.body)
        return self.prompt


class Keys:
    """The configured keys of one server and the accounting of their requests."""

    def __init__(self, config: Config, broker: Broker, relay: Relay) -> None:
        self.ledger = Ledger(broker)
        self.relay = relay
        self.listeners: list[Any] = []  # spend feeds: each gets the day's spend as requests settle
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Take the keys of `config` from now on (a reload); what was spent stays counted."""
        self.keys = {key.name: key for key in config.auth.api_keys}
        self._tokens = [(key.token.get_secret_value(), key.name) for key in config.auth.api_keys]

    def add_listener(self, feed: Any) -> None:
        """Have `feed` (a spend feed) publish the day's spend each time a request settles."""
        self.listeners.append(feed)

    def remove_listener(self, feed: Any) -> None:
        """Stop telling `feed` (its topic was removed or changed by a reload)."""
        self.listeners = [listener for listener in self.listeners if listener is not feed]

    # -- who pays ------------------------------------------------------------------------------
    def by_token(self, token: str | None) -> Account | None:
        """The key a token belongs to (compared in constant time against every key), or None."""
        found = None
        for secret, name in self._tokens:
            if token_in(token, [secret]):
                found = name
        return None if found is None else account_of(self.keys[found])

    def for_name(self, name: str, fallback: str | None) -> Account:
        """The account `name` (a viewer) is charged to: the key of that name, else the `fallback`
        key's limits under `name`, else no limits."""
        if name in self.keys:
            return account_of(self.keys[name])
        if fallback is not None and fallback in self.keys:
            return account_of(self.keys[fallback], name)
        return Account(name)

    # -- admission and settlement --------------------------------------------------------------
    async def admit(self, account: Account, body: dict[str, Any], providers: list[Any], label: str) -> Ticket:
        """Reserve the request's estimate against the account, or raise HTTPError 403 / 429.
        `providers`: those that serve the model (the estimate is the dearest's); `label`: the
        model's metrics label."""
        model = str(body["model"])
        if not account.allows(model):
            REFUSED.labels(account.name, "model").inc()
            raise HTTPError(403, f"api key {account.name!r} may not use model {model!r}", "model_not_allowed")
        if account.limits == NO_LIMITS:  # nothing to hold: no trip to the broker before answering
            second = int(time.time())
            return Ticket(Reservation(account.name, label, 0, 0, second, second // DAY), body)
        prompt = prompt_tokens(body)
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        completion = limit if type(limit) is int and limit > 0 else account.default_max_tokens
        cost = max((p.price(prompt, completion) or 0.0 for p in providers), default=0.0)
        nusd = math.ceil(cost * NANO)
        try:
            result = await self.ledger.reserve(account.name, label, account.limits, prompt + completion, nusd)
        except BrokerUnavailable as exc:
            raise HTTPError(
                503,
                f"cannot check the limits of api key {account.name!r}: {exc}",
                "broker_unavailable",
                {"Retry-After": "1"},
            ) from None
        if isinstance(result, Refusal):
            REFUSED.labels(account.name, result.reason).inc()
            raise refusal_error(account.name, result)
        return Ticket(result, body, prompt)

    async def settle(self, ticket: Ticket, measure: Measure, text_chars: int) -> None:
        """Charge what the request used. Never raises, except the caller's cancellation, and that
        only once the broker has settled (a failure of the broker is logged: the reservation then
        holds until the day ends)."""
        res = ticket.reservation
        if measure.usage is not None:
            prompt = measure.usage.get("prompt_tokens", 0)
            completion = measure.usage.get("completion_tokens", 0)
            if measure.outcome != "ok" and measure.finish_reason is None:
                # Cut short before its end: what usage came was the start's (Anthropic's
                # message_start counts one output token), not the answer's; the text relayed counts more.
                completion = max(completion, estimate_tokens(text_chars))
        elif measure.first_event_in is not None:  # the provider answered: it read the prompt
            prompt, completion = ticket.prompt_tokens, estimate_tokens(text_chars)
        else:
            prompt = completion = 0
        price = self.relay.price(measure.provider)
        cost = (price(prompt, completion) if price is not None else None) or 0.0
        cancelled: asyncio.CancelledError | None = None
        try:
            # Shielded: a request cancelled now (its client left, the server stops) still settles.
            # The day's spend is parsed only for spend feeds (the flag by position: a wrapper of
            # Ledger.settle taking *args passes it on).
            settled = self.ledger.settle(res, prompt, completion, round(cost * NANO), bool(self.listeners))
            spend = await finish_shielded(settled)
        except asyncio.CancelledError as exc:
            if exc.__cause__ is not None:
                log.warning("key %r: cannot settle a request's spend: %s", res.account, exc.__cause__)
                raise
            cancelled = exc
        except Exception as exc:
            log.warning("key %r: cannot settle a request's spend: %s", res.account, exc)
            return
        labelled(REQUESTS, res.account, measure.outcome).inc()
        labelled(TOKENS, res.account, "prompt").inc(prompt)
        labelled(TOKENS, res.account, "completion").inc(completion)
        labelled(COST, res.account).inc(cost)
        if cancelled is not None:
            raise cancelled
        if spend is None:  # no spend feed to tell
            return
        last = {
            "key": res.account,
            "model": res.model,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cost_usd": round(cost, 9),
            "outcome": measure.outcome,
        }
        for feed in self.listeners:
            try:
                await feed.publish(Event(spend_report(spend, res.day, last)))
            except Exception as exc:
                log.warning("topic %r: cannot publish the spend: %s", feed.topic, exc)

    async def today(self) -> dict[str, Any]:
        """The day's spend as the spend feed publishes it."""
        return spend_report(await self.ledger.spend(), None, None)


def prompt_tokens(body: dict[str, Any]) -> int:
    """A completion request's prompt in tokens, estimated from its text (its usage is not known yet)."""
    return estimate_tokens(json.dumps([body.get("system"), body.get("messages")], ensure_ascii=False))


def estimate_tokens(text: str | int) -> int:
    """Tokens in a text (or in that many characters), as most tokenizers average on English."""
    chars = text if isinstance(text, int) else len(text)
    return math.ceil(chars / CHARS_PER_TOKEN)


def refusal_error(name: str, refusal: Refusal) -> HTTPError:
    headers = {"Retry-After": str(refusal.retry_after)}
    if refusal.reason == "budget":
        message = (
            f"api key {name!r} has spent its daily_usd budget, or what is left is held by requests in flight"
        )
        return HTTPError(429, message, "budget_exceeded", headers)
    what = "requests" if refusal.reason == "rpm" else "tokens"
    message = (
        f"api key {name!r} is over its {refusal.reason} ({what} per minute); retry in {refusal.retry_after}s"
    )
    return HTTPError(429, message, "rate_limited", headers)


def _usd(counters: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "requests": counters.get("requests", 0),
        "prompt_tokens": counters.get("prompt_tokens", 0),
        "completion_tokens": counters.get("completion_tokens", 0),
        "cost_usd": round(counters.get("nusd", 0) / NANO, 9),
    }
    if "reserved" in counters:
        out["held_usd"] = round(counters["reserved"] / NANO, 9)
    return out


def spend_report(
    spend: dict[str, dict[str, dict[str, int]]], day: int | None, last: dict[str, Any] | None
) -> dict[str, Any]:
    """The day's spend per key and per model (US dollars), and the request that just settled."""
    if day is None:
        day = int(datetime.datetime.now(datetime.UTC).timestamp()) // DAY
    keys = {name: _usd(c) for name, c in sorted(spend["keys"].items())}
    report: dict[str, Any] = {
        "day": (datetime.date(1970, 1, 1) + datetime.timedelta(days=day)).isoformat(),
        "cost_usd": round(sum(k["cost_usd"] for k in keys.values()), 9),
        "requests": sum(k["requests"] for k in keys.values()),
        "keys": keys,
        "models": {name: _usd(c) for name, c in sorted(spend["models"].items())},
    }
    if last is not None:
        report["last"] = last
    return report
