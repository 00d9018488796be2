"""What a feed's routes use to read requests and answer errors: bounded bodies, JSON with a depth
limit and its media type, Bearer tokens, cross-site checks, webhook signatures, and HTTPError
(answered as `{"error": {"code", "message"}}`)."""

from dashboard.auth.credentials import bearer_token, require_bearer
from dashboard.errors import HTTPError
from dashboard.security import token_in
from dashboard.web.cors import cross_site
from dashboard.web.errors import (
    media_type,
    parse_count,
    parse_json,
    read_body,
    read_json,
    require_json_type,
)
from dashboard.web.publish import describe_invalid
from dashboard.webhooks import hmac_key, hub_signature, hub_signature_matches, standard_signature_matches

__all__ = [
    "HTTPError",
    "bearer_token",
    "cross_site",
    "describe_invalid",
    "hmac_key",
    "hub_signature",
    "hub_signature_matches",
    "media_type",
    "parse_count",
    "parse_json",
    "read_body",
    "read_json",
    "require_bearer",
    "require_json_type",
    "standard_signature_matches",
    "token_in",
]
