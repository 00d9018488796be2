"""Trusted proxies (`auth.viewers.trusted_proxies`): whose forwarding headers are believed, to know
who a client is and whether it came over TLS. Any other peer's headers are not read."""

from __future__ import annotations

import ipaddress

from starlette.requests import HTTPConnection
from starlette.types import Scope

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def host_name(header: str) -> str:
    """`example.com:8000` -> `example.com`; `[::1]:8000` -> `::1`."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class TrustedProxies:
    """The proxies whose forwarding headers this server believes."""

    def __init__(self, networks: list[Network]) -> None:
        self.networks = networks

    def trusted(self, address: IPAddress | None) -> bool:
        """Whether `address` is one of the trusted proxies."""
        return address is not None and any(address in network for network in self.networks)

    def from_trusted_proxy(self, request: HTTPConnection) -> bool:
        """Whether the connection's own peer is a trusted proxy."""
        return request.client is not None and self.trusted(ip(request.client.host))

    def over_tls(self, request: HTTPConnection) -> bool:
        """Whether the request came over TLS: to this server itself, or to a trusted proxy that says
        so with `X-Forwarded-Proto: https` (from any other peer the header is ignored). The cookies
        the server sets are `Secure` then."""
        if request.url.scheme == "https":
            return True
        proto = request.headers.get("x-forwarded-proto", "").partition(",")[0].strip().lower()
        return proto == "https" and self.from_trusted_proxy(request)

    def client_address(self, scope: Scope) -> str:
        """Who a connection's streams are counted against (server.max_streams_per_client): its peer
        address; behind a trusted proxy, the right-most X-Forwarded-For address that is not a trusted
        proxy (the left-most when all are: the furthest hop known). The header of any other peer is
        not read, and an entry that is not an address ends the walk (what lies left of it is not
        vouched for)."""
        peer = scope.get("client")
        host = peer[0] if peer else ""
        if not self.trusted(ip(host)):
            return host
        forwarded = b",".join(value for name, value in scope["headers"] if name == b"x-forwarded-for")
        client = host
        for entry in reversed(forwarded.decode("latin-1").split(",")) if forwarded else ():
            address = ip(host_name(entry.strip()))
            if address is None:
                break
            client = str(address)
            if not self.trusted(address):
                break
        return client
