"""The gate every request passes first: a Host this server does not answer for is refused (421), so
that a page on another site that points a name of its own at this address (DNS rebinding) reaches
nothing; and request headers are bounded (400, 431), which uvicorn's parser does not do."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.types import Scope

from dashboard.auth.proxies import host_name
from dashboard.security import is_loopback
from dashboard.web.errors import error_response

if TYPE_CHECKING:
    from dashboard.config import Config

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def allowed_hosts(config: Config) -> list[str]:
    """`server.allowed_hosts`, or the default for the bind address: loopback names, or any."""
    if config.server.allowed_hosts is not None:
        return config.server.allowed_hosts
    host = config.server.host
    if not is_loopback(host):
        return ["*"]
    return list(dict.fromkeys([*LOOPBACK_HOSTS, host.strip("[]")]))  # 127.0.0.2 serves its own URL


class HostCheck:
    """Refuses (421) a request whose Host is not an allowed name."""

    def __init__(self, hosts: list[str]) -> None:
        self.hosts = [h.lower() for h in hosts]
        self.any = "*" in self.hosts
        self.names = {h for h in self.hosts if not any(c in h for c in "*?[")}  # matched as they are

    def refusal(self, scope: Scope) -> Response | None:
        if self.any:
            return None
        host = next((value for name, value in scope["headers"] if name == b"host"), b"")
        host = host.decode("latin-1").lower()
        name = host_name(host)
        if name in self.names or any(fnmatchcase(name, pattern) for pattern in self.hosts):
            return None
        shown = host[:100] or "none"
        message = f"this server does not answer for host {shown!r} (server.allowed_hosts)"
        return error_response(421, message, "bad_host")


MAX_HEADER = 8192  # bytes in one request header value; nginx's default buffer holds 8 KiB too
MAX_HEADERS = 100  # headers in one request
MAX_HEADER_BYTES = 32 * 1024  # all of them together (nginx's default: 4 buffers of 8 KiB)


def header_refusal(scope: Scope) -> Response | None:
    """400 for a request with a header value over MAX_HEADER bytes, 431 for one with too many
    headers or too many bytes of them, before any route reads them (uvicorn's httptools parser
    bounds neither one value nor all of them)."""
    headers = scope["headers"]
    if len(headers) > MAX_HEADERS:
        message = f"the request has {len(headers)} headers, over the limit of {MAX_HEADERS}"
        return error_response(431, message, "headers_too_large")
    total = 0
    for name, value in headers:
        if len(value) > MAX_HEADER:
            header = name.decode("latin-1")
            message = f"the {header} header is {len(value)} bytes, over the limit of {MAX_HEADER}"
            return error_response(400, message, "header_too_large")
        total += len(name) + len(value)
    if total > MAX_HEADER_BYTES:
        message = f"the request's headers are {total} bytes, over the limit of {MAX_HEADER_BYTES}"
        return error_response(431, message, "headers_too_large")
    return None
