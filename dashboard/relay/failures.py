"""How a provider's failure is classified: which relay error it is, whether the same provider may be
asked again (`retry`), whether the next one may (`fallback`), and how long it asked us to wait."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time

import httpx

from dashboard.relay.errors import (
    ConnectTimeout,
    FirstTokenTimeout,
    RelayError,
    TotalTimeout,
    UpstreamIncomplete,
    UpstreamStatus,
    UpstreamUnreachable,
)
from dashboard.relay.providers import Provider

_RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After (or retry-after-ms) header, when there is one."""
    ms = response.headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    raw = response.headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


def mark(error: RelayError, *, retry: bool, fallback: bool, retry_after: float | None = None) -> RelayError:
    error.retry, error.fallback, error.retry_after = retry, fallback, retry_after
    return error


def transport_error(provider: Provider, exc: httpx.TransportError, *, sent: bool) -> RelayError:
    """A transport failure as a relay error; `sent`: the provider had started to answer."""
    name = provider.name
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        error: RelayError = ConnectTimeout(
            f"connect timeout ({provider.timeouts.connect:g}s) expired reaching provider {name!r}"
        )
        return mark(error, retry=True, fallback=True)
    if isinstance(exc, httpx.ConnectError):
        reason = provider.redactor.text(str(exc)) or type(exc).__name__
        return mark(
            UpstreamUnreachable(f"cannot connect to provider {name!r}: {reason}"), retry=True, fallback=True
        )
    what = "broke off the stream" if sent else "closed the connection before answering"
    reason = provider.redactor.text(str(exc)) or type(exc).__name__
    return mark(UpstreamIncomplete(f"provider {name!r} {what}: {reason}"), retry=not sent, fallback=not sent)


async def status_error(provider: Provider, response: httpx.Response, deadline: float) -> RelayError:
    """An error status from the provider, with its own message (redacted) when it gave one."""
    try:
        async with asyncio.timeout_at(deadline):
            raw = await response.aread()
    except (TimeoutError, httpx.TransportError):
        raw = b""
    message, code = "", None
    try:
        obj = json.loads(raw[:65536])
        err = obj.get("error", obj) if isinstance(obj, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or "")
            code = err.get("code") if isinstance(err.get("code"), str) else None
        elif isinstance(err, str):
            message = err
    except ValueError:
        message = raw[:300].decode("utf-8", "replace").strip()
    status = response.status_code
    text = f"provider {provider.name!r} answered {status}"
    if message:
        text += f": {provider.redactor.text(message)}"
    wait = retry_after(response) if status in (429, 503) else None
    headers = {"Retry-After": str(max(1, round(wait)))} if status == 429 and wait is not None else None
    error = UpstreamStatus(status, text, code=code if status == 429 else None, headers=headers)
    if status in (401, 403):
        error.message = f"{text} (check the provider's api_key on the server)"
        error.args = (error.message,)
    retry = status in _RETRY_STATUSES or status >= 500
    return mark(error, retry=retry, fallback=retry or status in (401, 403, 404), retry_after=wait)


def first_token_expired(provider: Provider, deadline: float, first: float) -> RelayError:
    if deadline <= first:
        return TotalTimeout(
            f"total timeout ({provider.timeouts.total:g}s) expired waiting for {provider.name!r}"
        )
    return FirstTokenTimeout(
        f"first token timeout ({provider.timeouts.first_token:g}s) expired: "
        f"provider {provider.name!r} sent no event in time"
    )
