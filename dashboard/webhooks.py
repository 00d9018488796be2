"""Webhook signatures, one implementation for the alerts that send them and the notifications feed
that checks them: Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`) and
GitHub's `X-Hub-Signature-256`."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import time

SECRET_PREFIX = "whsec_"  # a Standard Webhooks secret: this prefix, then the key in base64


def hmac_key(secret: str) -> bytes:
    """The HMAC key of a webhook secret: `whsec_<base64>` is the decoded key, as Standard Webhooks
    senders and receivers read it; any other secret is its UTF-8 bytes. ValueError when a `whsec_`
    secret is not base64 or is empty."""
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode()
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret written whsec_... must be followed by base64") from None
    if not key:
        raise ValueError("a webhook secret must not be empty (whsec_ followed by base64)")
    return key


def standard_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """A `webhook-signature` entry: `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(key: bytes, msg_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The Standard Webhooks headers of one delivery attempt."""
    timestamp = math.floor(time.time() if now is None else now)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard_signature(key, msg_id, timestamp, body),
    }


def standard_signature_matches(key: bytes, msg_id: str, timestamp: int, body: bytes, signatures: str) -> bool:
    """Whether any of the space-separated `signatures` signs the message (constant-time compare)."""
    expected = standard_signature(key, msg_id, timestamp, body).encode()
    return any(hmac.compare_digest(given.encode(), expected) for given in signatures.split())


def hub_signature(key: bytes, body: bytes) -> str:
    """GitHub's `X-Hub-Signature-256` value for `body`: `sha256=` and the HMAC-SHA256 hex digest."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def hub_signature_matches(key: bytes, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(signature.strip().lower().encode(), hub_signature(key, body).encode())
