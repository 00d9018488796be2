"""Who may see and do what: viewers (signed tokens, an auth proxy), the page's proof for prompts,
cross-site requests, the Host header, and what a bind address opens to the network.

Without `auth.viewers` every topic is readable by whoever reaches the port (on a loopback bind:
this machine). With it, a topic is private unless `public: true`, and a viewer reads the topics
its token's `topics` patterns (or the proxy user's patterns in `users`) match.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus, urlsplit

import jwt
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dashboard.security import is_loopback, token_in
from dashboard.web.errors import HTTPError, bearer_token, error_response

if TYPE_CHECKING:
    from dashboard.config import Config

log = logging.getLogger("dashboard.access")

VIEWER_COOKIE = "dashboard_viewer"  # the viewer token, set by GET /?token=
SESSION_COOKIE = "dashboard_session"  # a random id the page's prompt proof is bound to
PROMPT_HEADER = "X-Dashboard-Prompt"  # where the page sends that proof
PROMPT_PROOF_TTL = 24 * 3600  # seconds a page may prompt before it must be reloaded
LEEWAY = 10  # seconds of clock skew allowed on a token's exp
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
SIGNING_ALGORITHMS = ("HS256",)
PUBLIC_KEY_ALGORITHMS = ("RS256", "ES256")


@dataclass(frozen=True)
class Viewer:
    """Who a request comes from, as far as topics are concerned."""

    name: str | None  # the token's `sub` or the proxy's user; None when anonymous
    patterns: tuple[str, ...]  # topic patterns this viewer may read besides public topics
    authenticated: bool

    def matches(self, topic: str) -> bool:
        return any(fnmatchcase(topic, pattern) for pattern in self.patterns)


EVERYONE = Viewer(None, ("*",), False)  # access control is off: every topic is readable
ANONYMOUS = Viewer(None, (), False)


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def parse_ttl(text: str) -> int:
    """`90`, `30s`, `15m`, `8h`, `7d` -> seconds; ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"not a duration: {text!r} (write 90s, 15m, 8h or 7d)")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


class Access:
    """The access rules of one server, from `auth` and `topics` in its config."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.viewers = config.auth.viewers
        self.public = {name for name, topic in config.topics.items() if topic.public}
        # Every token the relay and prompts accept: plain api tokens and named keys'.
        self.api_tokens = [
            *config.auth.api_tokens,
            *(k.token.get_secret_value() for k in config.auth.api_keys),
        ]
        # The page's prompt proof is signed with a key every instance derives from the same config.
        material = "\0".join(sorted(self.api_tokens)).encode()
        if self.viewers is not None and self.viewers.secret is not None:
            material += b"\0" + self.viewers.secret.get_secret_value().encode()
        self._proof_key = hashlib.sha256(b"sse-dashboard page prompts\0" + material).digest()

    @property
    def enabled(self) -> bool:
        """Whether topics are private unless public (auth.viewers is configured)."""
        return self.viewers is not None

    # -- viewers -------------------------------------------------------------------------------
    def decode(self, token: str) -> dict[str, Any]:
        """The claims of a viewer token; HTTPError 401 when it is malformed, forged or expired."""
        assert self.viewers is not None
        if self.viewers.secret is not None:
            key: Any = self.viewers.secret.get_secret_value()
            algorithms = list(SIGNING_ALGORITHMS)
        elif self.viewers.public_key is not None:
            key, algorithms = self.viewers.public_key, list(PUBLIC_KEY_ALGORITHMS)
        else:
            raise _unauthorized("viewer tokens are not accepted here: this server trusts its auth proxy")
        try:
            claims = jwt.decode(
                token, key, algorithms=algorithms, options={"require": ["exp"]}, leeway=LEEWAY
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("the viewer token has expired", "token_expired") from None
        except jwt.InvalidTokenError as exc:
            raise _unauthorized(f"invalid viewer token: {exc}", "invalid_token") from None
        topics = claims.get("topics", [])
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            raise _unauthorized("invalid viewer token: `topics` must be a list of patterns", "invalid_token")
        return claims

    def mint(self, topics: list[str], ttl: int, subject: str | None = None) -> str:
        """A viewer token for `topics` patterns, valid for `ttl` seconds (`dashboard token`)."""
        if self.viewers is None or self.viewers.secret is None:
            raise ValueError(
                "minting needs auth.viewers.secret in the config (with public_key, sign tokens with "
                "your private key where it is kept)"
            )
        now = int(time.time())
        claims: dict[str, Any] = {"topics": topics, "iat": now, "exp": now + ttl}
        if subject:
            claims["sub"] = subject
        return jwt.encode(claims, self.viewers.secret.get_secret_value(), algorithm="HS256")

    def viewer(self, request: HTTPConnection) -> Viewer:
        """Who `request` comes from (cached on it); 401 for a token that is not valid."""
        cached = request.scope.get("dashboard.viewer")
        if cached is not None:
            return cached
        viewer = self._identify(request)
        request.scope["dashboard.viewer"] = viewer
        return viewer

    def _identify(self, request: HTTPConnection) -> Viewer:
        if self.viewers is None:
            return EVERYONE
        user = self._proxy_user(request)
        if user is not None:
            return Viewer(user, tuple(self.viewers.users.get(user, ())), True)
        token = viewer_token(request)
        if token is None:
            return ANONYMOUS
        claims = self.decode(token)
        subject = claims.get("sub")
        return Viewer(subject if isinstance(subject, str) else None, tuple(claims.get("topics", ())), True)

    def _proxy_user(self, request: HTTPConnection) -> str | None:
        assert self.viewers is not None
        header = self.viewers.proxy_header
        if header is None:
            return None
        value = request.headers.get(header)
        if not value or not self._from_trusted_proxy(request):
            return None  # anyone can send the header: it counts only from the proxy
        return value.strip()

    def _from_trusted_proxy(self, request: HTTPConnection) -> bool:
        """Whether the connection's own peer is one of `auth.viewers.trusted_proxies`."""
        return request.client is not None and self._trusted(_ip(request.client.host))

    def over_tls(self, request: HTTPConnection) -> bool:
        """Whether the request came over TLS: to this server itself, or to a proxy in
        `auth.viewers.trusted_proxies` that says so with `X-Forwarded-Proto: https` (from any
        other peer the header is ignored). The cookies the server sets are `Secure` then."""
        if request.url.scheme == "https":
            return True
        proto = request.headers.get("x-forwarded-proto", "").partition(",")[0].strip().lower()
        return proto == "https" and self._from_trusted_proxy(request)

    def api_token(self, request: HTTPConnection) -> str | None:
        """The api token the request carries (Bearer, or x-api-key as the Anthropic SDK sends it),
        when it is one of `auth.api_tokens` or a named key's."""
        for token in (bearer_token(request), request.headers.get("x-api-key")):
            if token_in(token, self.api_tokens):
                return token
        return None

    def metrics_reader(self, request: HTTPConnection, spend_topics: list[str]) -> tuple[Viewer, bool]:
        """Who reads /metrics: the viewer whose topics' series are shown, and whether the per-key
        series (requests, tokens, spend of each api key) are. Without viewers or api tokens they
        are shown to anyone; with them, to a caller presenting an api token, or to a viewer who
        may read a `spend` topic (which shows the same numbers)."""
        token = self.api_token(request)
        if token is not None and token == bearer_token(request):
            viewer = ANONYMOUS if self.enabled else EVERYONE  # that header holds no viewer token
        else:
            viewer = self.viewer(request)
        keys = (
            not (self.enabled or self.api_tokens)
            or token is not None
            or any(self.may_read(viewer, topic) for topic in spend_topics)
        )
        return viewer, keys

    def _trusted(self, address: IPAddress | None) -> bool:
        """Whether `address` is one of auth.viewers.trusted_proxies."""
        proxies = self.viewers.trusted_proxies if self.viewers is not None else ()
        return address is not None and any(address in network for network in proxies)

    def client_address(self, scope: Scope) -> str:
        """Who a connection's streams are counted against (server.max_streams_per_client): its peer
        address; behind a trusted proxy, the right-most X-Forwarded-For address that is not a trusted
        proxy (the left-most when all are: the furthest hop known). The header of any other peer is
        not read, and an entry that is not an address ends the walk (what lies left of it is not
        vouched for)."""
        peer = scope.get("client")
        host = peer[0] if peer else ""
        if not self._trusted(_ip(host)):
            return host
        forwarded = b",".join(value for name, value in scope["headers"] if name == b"x-forwarded-for")
        client = host
        for entry in reversed(forwarded.decode("latin-1").split(",")) if forwarded else ():
            address = _ip(host_name(entry.strip()))
            if address is None:
                break
            client = str(address)
            if not self._trusted(address):
                break
        return client

    def may_read(self, viewer: Viewer, topic: str) -> bool:
        return topic in self.public or viewer.matches(topic)

    def readable(self, viewer: Viewer, topics: list[str]) -> list[str]:
        return [t for t in topics if self.may_read(viewer, t)]

    def require(self, request: HTTPConnection, topics: list[str]) -> Viewer:
        """The viewer, once it may read every one of `topics`: 401 without credentials, 403 naming
        the first topic its token does not cover."""
        viewer = self.viewer(request)
        for topic in topics:
            if self.may_read(viewer, topic):
                continue  # (an unknown topic is then a 404; before that, whether it exists is not said)
            if not viewer.authenticated:
                raise _unauthorized(
                    f"topic {topic!r} needs a viewer token (Authorization: Bearer, ?token=, "
                    "or open the dashboard with /?token=...)"
                )
            who = f"viewer {viewer.name!r}" if viewer.name else "this viewer token"
            raise HTTPError(403, f"{who} may not read topic {topic!r}", "forbidden_topic")
        return viewer

    # -- the page's prompts --------------------------------------------------------------------
    def prompt_proof(self, session: str) -> str:
        """What the page sends with its prompts: bound to its session cookie, valid for a day."""
        claims = {"sid": _digest(session), "exp": int(time.time()) + PROMPT_PROOF_TTL}
        return jwt.encode(claims, self._proof_key, algorithm="HS256")

    def has_prompt_proof(self, request: Request) -> bool:
        """Whether the request carries a proof this server issued to the page, with that page's
        session cookie: a header alone, or a proof from another browser, is not enough."""
        proof = request.headers.get(PROMPT_HEADER)
        session = request.cookies.get(SESSION_COOKIE)
        if not proof or not session:
            return False
        try:
            claims = jwt.decode(proof, self._proof_key, algorithms=["HS256"], options={"require": ["exp"]})
        except jwt.InvalidTokenError:
            return False
        return hmac.compare_digest(str(claims.get("sid", "")), _digest(session))


def new_session() -> str:
    return secrets.token_urlsafe(24)


def _digest(session: str) -> str:
    return hashlib.sha256(session.encode()).hexdigest()


def viewer_token(request: HTTPConnection) -> str | None:
    """A viewer token from `Authorization: Bearer`, `?token=` or the cookie, in that order."""
    return bearer_token(request) or request.query_params.get("token") or request.cookies.get(VIEWER_COOKIE)


def _unauthorized(message: str, code: str = "unauthorized") -> HTTPError:
    return HTTPError(401, message, code, headers={"WWW-Authenticate": "Bearer"})


def cross_site(request: HTTPConnection) -> bool:
    """Whether a browser says the request comes from another site's page. Only ever used to refuse:
    these headers prove nothing when present, but a browser always sends them on such requests."""
    site = request.headers.get("sec-fetch-site")
    if site in ("cross-site", "same-site"):
        return True
    origin = request.headers.get("origin")
    if origin is None:
        return False
    parts = urlsplit(origin)
    return (
        origin == "null"
        or parts.scheme not in ("http", "https")
        or parts.netloc != request.headers.get("host")
    )


class HideTokens(logging.Filter):
    """Keeps secrets given in URLs out of the access log (`serve --access-log` logs each path): the
    value of every query parameter whose name looks like a secret's is replaced by `<hidden>`,
    however the name is written (`?TOKEN=`, `?%74oken=`, `?token%00=`, `?access_token=`, `?api_key=`)."""

    parameter = re.compile(r"([?&])([^=&\s]*)=([^&\s]*)")
    # in a parameter's name, percent-decoded, case-folded and stripped of all but letters and digits
    secret_words = ("token", "key", "secret", "pass", "pwd", "auth", "sig", "credential", "session", "jwt")

    @classmethod
    def secret_name(cls, name: str) -> bool:
        for _ in range(5):  # encoded several times over: decode until nothing changes
            decoded = unquote_plus(name)
            if decoded == name:
                break
            name = decoded
        letters = re.sub(r"[\W_]", "", name.casefold())
        return any(word in letters for word in cls.secret_words)

    def _hide(self, match: re.Match[str]) -> str:
        if self.secret_name(match.group(2)):
            return f"{match.group(1)}{match.group(2)}=<hidden>"
        return match.group(0)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self.parameter.sub(self._hide, a) if isinstance(a, str) else a for a in record.args
            )
        return True


HIDE_TOKENS = HideTokens()


# -- the Host header -------------------------------------------------------------------------
def allowed_hosts(config: Config) -> list[str]:
    """`server.allowed_hosts`, or the default for the bind address: loopback names, or any."""
    if config.server.allowed_hosts is not None:
        return config.server.allowed_hosts
    host = config.server.host
    if not is_loopback(host):
        return ["*"]
    return list(dict.fromkeys([*LOOPBACK_HOSTS, host.strip("[]")]))  # 127.0.0.2 serves its own URL


def host_name(header: str) -> str:
    """`example.com:8000` -> `example.com`; `[::1]:8000` -> `::1`."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class ReadsCORS:
    """CORS for the read routes only (/sse, /api), for the origins in `server.cors_origins`."""

    def __init__(self, app: ASGIApp, origins: list[str], credentials: bool) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=["GET"],
            allow_headers=["Authorization", "Last-Event-ID"],
            allow_credentials=credentials,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == "/sse" or path.startswith(("/sse/", "/api/"))):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class HostCheck:
    """Refuses (421) a request whose Host is not an allowed name: a page on another site that
    points a name of its own at this address (DNS rebinding) reaches nothing."""

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


# -- what a bind opens ---------------------------------------------------------------------
def network_problems(config: Config) -> list[str]:
    """Why serving `config` on a non-loopback address would open what loopback kept private."""
    auth = config.auth
    problems = []
    paid = [p.name for p in config.ai.providers if p.type != "simulated"]
    if paid and not (auth.api_tokens or auth.api_keys) and "ai" not in auth.open_on_network:
        problems.append(
            f"the AI relay (/v1 and prompts) would spend the key of provider {paid[0]!r} for anyone who "
            "reaches the port: set auth.api_tokens or auth.api_keys, or add `ai` to auth.open_on_network "
            "to serve it open"
        )
    page_prompts = [n for n, t in config.topics.items() if getattr(t._feed_options, "page_prompts", False)]
    if paid and page_prompts and auth.viewers is None and "ai" not in auth.open_on_network:
        problems.append(
            f"the prompt box of topic {page_prompts[0]!r} would let anyone who opens the page spend the "
            f"key of provider {paid[0]!r}: configure auth.viewers (only viewers of the topic may prompt), "
            "set its option page_prompts: false (api tokens only), or add `ai` to auth.open_on_network"
        )
    pushable = [name for name, t in config.topics.items() if t.feed_class.accepts_publish]
    if pushable and not auth.publish_tokens and "publish" not in auth.open_on_network:
        problems.append(
            f"topic {pushable[0]!r} takes pushed events but auth.publish_tokens is empty: set "
            "auth.publish_tokens, or add `publish` to auth.open_on_network (publishing stays disabled)"
        )
    return problems


def describe(config: Config) -> list[str]:
    """What is open to whom, one line each, for the startup banner."""
    auth = config.auth
    where = "this machine" if is_loopback(config.server.host) else "anyone who reaches the port"
    lines = []
    if auth.viewers is None:
        lines.append(f"topics: readable by {where} (no auth.viewers)")
    else:
        public = [n for n, t in config.topics.items() if t.public]
        ways = []
        if auth.viewers.secret or auth.viewers.public_key:
            ways.append("tokens")
        if auth.viewers.proxy_header:
            ways.append("proxy users")
        lines.append(
            f"topics: private to viewers ({' and '.join(ways)}); public: {', '.join(public) or 'none'}"
        )
    paid = any(p.type != "simulated" for p in config.ai.providers)
    if auth.api_tokens or auth.api_keys:
        page = "viewers of the topic" if auth.viewers else f"{where} (whoever opens the page)"
        lines.append(
            f"AI relay and prompts: {len(auth.api_tokens)} api token(s), {len(auth.api_keys)} named key(s); "
            f"the page's prompt box: {page}"
        )
    else:
        lines.append(f"AI relay and prompts: {where}{'' if paid else ' (simulated providers only)'}")
    if auth.publish_tokens:
        lines.append(f"publish: {len(auth.publish_tokens)} publish token(s)")
    else:
        lines.append("publish: disabled (no auth.publish_tokens)")
    hosts = allowed_hosts(config)
    if "*" in hosts:
        lines.append("Host header: any (set server.allowed_hosts to the names you serve)")
    else:
        lines.append(f"Host header: {', '.join(hosts)}")
    secret = auth.viewers.secret if auth.viewers is not None else None
    if secret is not None and len(secret.get_secret_value().encode()) < 32:
        lines.append("WARNING: auth.viewers.secret is under 32 bytes: tokens can be forged by brute force")
    if config.server.cors_origins:
        lines.append(f"CORS (/sse, /api): {', '.join(config.server.cors_origins)}")
    return lines
