"""Alert rules: a threshold on a field of a topic's events, `ok -> pending -> firing -> ok`.

Every instance follows each rule's state from the events it delivers; the one holding the rule's
lease (the feeds' leadership mechanism, `alert:<name>`) announces the changes: an `alert` event
on the rule's `notify` topic for every change, a notification when it fires and when it resolves,
and one signed delivery per webhook (Standard Webhooks), retried with backoff in a task of its own.

Each change is kept by the broker (`Broker.keep`, under `alert:<name>`): on a durable one (sqlite)
a rule takes up after a restart where it was, so a firing rule stays firing, with its `since`,
and is not announced again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from dashboard.backoff import Backoff
from dashboard.broker import Broker
from dashboard.config import AlertRule, WebhookConfig
from dashboard.errors import BrokerUnavailable
from dashboard.events import ALERT_EVENT, Event, Message
from dashboard.tasks import cancel_and_wait, finish_shielded
from dashboard.webhooks import hmac_key, signed_headers

log = logging.getLogger("dashboard.alerts")

ATTEMPTS_KEPT = 20  # delivery attempts per rule shown in /api/alerts
RETRY_BACKOFF = Backoff(1.0, 60.0)  # seconds before the second attempt, doubled each time, jittered


def field_value(data: Any, path: str) -> float | None:
    """The number at a dotted path of an event's JSON data, or None."""
    for key in path.split("."):
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    if isinstance(data, bool) or not isinstance(data, int | float) or not math.isfinite(data):
        return None
    return float(data)


def origin_of(url: str) -> str:
    """Where a webhook goes, without its path or query (they often hold a secret token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


class Rule:
    """One rule's state on this instance, and what it tells when it changes (as the leader)."""

    def __init__(self, config: AlertRule, alerts: Alerts) -> None:
        self.config = config
        self.alerts = alerts
        self.state = "ok"
        self.since = time.time()
        self.value: float | None = None
        self.holding = False
        self.held_from = 0.0  # monotonic: when the condition began to hold
        self.leader = False
        self.attempts: deque[dict[str, Any]] = deque(maxlen=ATTEMPTS_KEPT)
        self._timer: asyncio.TimerHandle | None = None
        self.publishing = asyncio.Lock()  # FIFO: the notify topic gets the changes in their order
        # ... and so does each webhook: a resolved is not delivered before the firing it ends
        self.delivering = [asyncio.Lock() for _ in config.webhooks]

    def condition(self, value: float) -> bool:
        rule = self.config
        return value > rule.above if rule.above is not None else value < rule.below  # type: ignore[operator]

    def observe(self, message: Message) -> None:
        """A message of the rule's topic: its default-type events carry the measured field."""
        if message.event != "message":
            return
        try:
            data = json.loads(message.data)
        except ValueError:
            return
        value = field_value(data, self.config.field)
        if value is None:
            return
        self.value = value
        holding = self.condition(value)
        if holding and not self.holding:
            self.held_from = time.monotonic()
        self.holding = holding
        if not holding and self.state in ("pending", "firing"):
            self._cancel_timer()
            self._enter("ok")
        elif holding and self.state == "ok":
            self._enter("pending")
            self._check_duration()

    def _check_duration(self) -> None:
        self._timer = None
        if self.state != "pending" or not self.holding:
            return
        left = self.config.for_ - (time.monotonic() - self.held_from)
        if left <= 0:
            self._enter("firing")
        else:
            self._timer = asyncio.get_running_loop().call_later(left, self._check_duration)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _enter(self, state: str) -> None:
        previous, self.state, self.since = self.state, state, time.time()
        rule = self.config
        log.info("alert %r: %s -> %s (%s = %s)", rule.name, previous, state, rule.field, self.value)
        self.alerts.broker.keep(f"alert:{rule.name}", self.kept())
        if self.leader:
            self.alerts.announce(self, previous)

    def kept(self) -> str:
        """What the broker keeps of this rule: its state, since when, the value, and since when
        (wall clock) the condition holds."""
        held_since = time.time() - (time.monotonic() - self.held_from) if self.holding else None
        return json.dumps({"state": self.state, "since": self.since, "value": self.value, "held": held_since})

    def restore(self, kept: str) -> None:
        """Take up the state kept before a restart, without announcing it again; a pending rule
        fires once the condition has held `for` seconds in all."""
        try:
            saved = json.loads(kept)
            state, since, value, held = saved["state"], float(saved["since"]), saved["value"], saved["held"]
        except (ValueError, KeyError, TypeError):
            log.warning("alert %r: ignored a kept state that does not read: %.80r", self.config.name, kept)
            return
        if state not in ("ok", "pending", "firing"):
            return
        self.state, self.since, self.value = state, since, value
        if held is not None:
            self.holding = True
            self.held_from = time.monotonic() - max(0.0, time.time() - float(held))
        if state == "pending":
            asyncio.get_running_loop().call_soon(self._check_duration)

    def as_json(self) -> dict[str, Any]:
        rule = self.config
        return {
            "rule": rule.name,
            "topic": rule.topic,
            "field": rule.field,
            "above": rule.above,
            "below": rule.below,
            "for": rule.for_,
            "notify": rule.notify,
            "state": self.state,
            "since": self.since,
            "value": self.value,
        }


class Alerts:
    """Every rule of the config: their states, their leadership, and their outbound deliveries."""

    def __init__(self, rules: list[AlertRule], broker: Broker) -> None:
        self.broker = broker
        self.rules: dict[str, Rule] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._leading: dict[str, asyncio.Task[None]] = {}
        self._client: httpx.AsyncClient | None = None
        self._started = False
        for rule in rules:
            self._add(rule)

    def _add(self, config: AlertRule) -> None:
        rule = self.rules[config.name] = Rule(config, self)
        self.broker.listen(config.topic, rule.observe)
        if self._started:  # a reload added or changed it: it starts again from `ok`
            self.broker.keep(f"alert:{config.name}", rule.kept())
            self._leading[config.name] = asyncio.create_task(self._lead(rule), name=f"alert:{config.name}")

    async def _remove(self, name: str) -> None:
        rule = self.rules.pop(name)
        rule._cancel_timer()
        self.broker.unlisten(rule.config.topic, rule.observe)
        await cancel_and_wait([self._leading.pop(name)] if name in self._leading else [])

    async def configure(self, rules: list[AlertRule]) -> None:
        """Follow `rules` from now on (a reload): a rule that did not change keeps its state; one
        that changed starts again from `ok`; deliveries under way finish."""
        wanted = {rule.name: rule for rule in rules}
        for name, rule in list(self.rules.items()):
            if wanted.get(name) != rule.config:
                await self._remove(name)
        for name, config in wanted.items():
            if name not in self.rules:
                self._add(config)

    def start(self) -> None:
        """Take up the rules' kept states and lead them; called once the broker is connected,
        before any event is delivered."""
        self._started = True
        self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        self._leading = {
            name: asyncio.create_task(self._lead(rule), name=f"alert:{name}")
            for name, rule in self.rules.items()
        }
        for name, rule in self.rules.items():  # after the leading tasks: a pending rule's check
            kept = self.broker.kept(f"alert:{name}")  # runs once a lone process leads it
            if kept is not None:
                rule.restore(kept)

    async def stop(self) -> None:
        for rule in self.rules.values():
            rule._cancel_timer()
        await cancel_and_wait([*self._leading.values(), *self._tasks])
        if self._client is not None:
            await self._client.aclose()

    async def _lead(self, rule: Rule) -> None:
        """Announce the rule's changes while this instance holds its lease."""
        while True:
            lease = await self.broker.acquire_lease(f"alert:{rule.config.name}")
            rule.leader = True
            try:
                await lease.lost.wait()
            finally:
                rule.leader = False
                if not lease.lost.is_set():
                    await finish_shielded(self.broker.release_lease(lease))

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- announcing ----------------------------------------------------------------------------
    def announce(self, rule: Rule, previous: str) -> None:
        """Tell of a change: the page's `alert` event, and on firing or resolving a notification
        and one delivery per webhook."""
        state = rule.as_json()
        events = [Event(data=state, event=ALERT_EVENT)]
        change = "firing" if rule.state == "firing" else "resolved" if previous == "firing" else None
        if change is not None:
            events.append(Event(data=self._notification(rule, change)))
            body = json.dumps(
                {
                    "type": f"alert.{change}",
                    "timestamp": datetime.fromtimestamp(rule.since, UTC).isoformat().replace("+00:00", "Z"),
                    "data": {**state, "state": change},
                },
                separators=(",", ":"),
            ).encode()
            msg_id = f"msg_{uuid.uuid4().hex}"
            for number, webhook in enumerate(rule.config.webhooks):
                self._spawn(self._deliver(rule, number, webhook, msg_id, change, body), f"webhook:{msg_id}")
        self._spawn(self._publish(rule, events), f"alert:{rule.config.name}:notify")

    @staticmethod
    def _notification(rule: Rule, change: str) -> dict[str, Any]:
        config = rule.config
        limit = f"above {config.above:g}" if config.above is not None else f"below {config.below:g}"
        value = "no value" if rule.value is None else f"{rule.value:g}"
        return {
            "id": f"alert-{config.name}-{uuid.uuid4().hex[:12]}",
            "title": f"{config.name} {change}: {config.field} = {value}",
            "body": f"{config.topic}.{config.field} {'is' if change == 'firing' else 'was'} {limit}",
            "level": "error" if change == "firing" else "success",
            "source": "alerts",
            "ts": rule.since,
            "rule": config.name,
            "state": change,
            "value": rule.value,
            "since": rule.since,
        }

    async def _publish(self, rule: Rule, events: list[Event]) -> None:
        async with rule.publishing:
            for event in events:
                try:
                    await self.broker.publish(rule.config.notify, event)
                except BrokerUnavailable as exc:
                    name, topic = rule.config.name, rule.config.notify
                    log.warning("alert %r: could not notify %r: %s", name, topic, exc)

    async def _deliver(
        self, rule: Rule, number: int, webhook: WebhookConfig, msg_id: str, change: str, body: bytes
    ) -> None:
        """POST one delivery until a 2xx answer or `attempts` tries, with backoff between them,
        after the rule's earlier deliveries to the same webhook (other webhooks never wait)."""
        async with rule.delivering[number]:
            await self._deliver_now(rule, number, webhook, msg_id, change, body)

    async def _deliver_now(
        self, rule: Rule, number: int, webhook: WebhookConfig, msg_id: str, change: str, body: bytes
    ) -> None:
        assert self._client is not None
        key = hmac_key(webhook.secret.get_secret_value())
        where = origin_of(webhook.url)
        for attempt in range(1, webhook.attempts + 1):
            record: dict[str, Any] = {
                "webhook": number,
                "origin": where,
                "id": msg_id,
                "event": change,
                "attempt": attempt,
                "at": time.time(),
                "status": None,
                "error": None,
                "ok": False,
            }
            headers = {"content-type": "application/json", **signed_headers(key, msg_id, body)}
            try:
                response = await self._client.post(
                    webhook.url, content=body, headers=headers, timeout=webhook.timeout
                )
                record["status"] = response.status_code
                record["ok"] = response.is_success
            except httpx.TimeoutException:
                record["error"] = f"timeout after {webhook.timeout:g}s"
            except httpx.HTTPError as exc:
                record["error"] = type(exc).__name__
            record["duration_ms"] = round((time.time() - record["at"]) * 1000, 1)
            rule.attempts.append(record)
            if record["ok"]:
                log.info("alert %r: delivered %s to %s (try %d)", rule.config.name, msg_id, where, attempt)
                return
            outcome = record["error"] or f"HTTP {record['status']}"
            log.warning(
                "alert %r: delivery %s to %s failed (attempt %d of %d): %s",
                rule.config.name,
                msg_id,
                where,
                attempt,
                webhook.attempts,
                outcome,
            )
            if attempt < webhook.attempts:
                await asyncio.sleep(RETRY_BACKOFF.delay(attempt))

    def as_json(self, readable) -> dict[str, Any]:
        """The rules on topics `readable(topic)` allows, with their state and delivery attempts."""
        return {
            name: {
                **rule.as_json(),
                "leader": rule.leader,
                "last_delivery": rule.attempts[-1] if rule.attempts else None,
                "attempts": list(rule.attempts),
            }
            for name, rule in self.rules.items()
            if readable(rule.config.topic)
        }
