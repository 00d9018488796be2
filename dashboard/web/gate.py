"""The Host gate: a request whose Host is not a name this server answers for is refused (421), so
that a page on another site that points a name of its own at this address (DNS rebinding) reaches
nothing."""

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

    def refusal(self, scope: Scope) -> Response | None:
        if self.any:
            return None
        host = next((value for name, value in scope["headers"] if name == b"host"), b"")
        host = host.decode("latin-1").lower()
        if any(fnmatchcase(host_name(host), pattern) for pattern in self.hosts):
            return None
        shown = host[:100] or "none"
        message = f"this server does not answer for host {shown!r} (server.allowed_hosts)"
        return error_response(421, message, "bad_host")
