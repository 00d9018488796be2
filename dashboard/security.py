"""Security helpers used across the layers: constant-time token checks, key checks, bind checks."""

from __future__ import annotations

import hmac
import ipaddress


def token_in(token: str | None, tokens: list[str]) -> bool:
    """Whether `token` is one of `tokens`, compared in constant time."""
    return token is not None and any(hmac.compare_digest(token.encode(), t.encode()) for t in tokens)


def check_public_key(pem: str) -> None:
    """ValueError unless `pem` is an RSA or EC public key (config validation)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise ValueError(f"public_key is not a PEM public key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ValueError("public_key must be an RSA (RS256) or EC P-256 (ES256) key")


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything
