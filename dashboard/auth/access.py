"""The access rules of one server, from `auth` and `topics` in its config: who a request comes from,
which topics it may read, and the credentials it carries.

Without `auth.viewers` every topic is readable by whoever reaches the port (on a loopback bind:
this machine). With it, a topic is private unless `public: true`, and a viewer reads the topics
its token's `topics` patterns (or the proxy user's patterns in `users`) match.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import HTTPConnection
from starlette.types import Scope

from dashboard.auth.api_tokens import api_token, configured_api_tokens, require_api_token
from dashboard.auth.credentials import bearer_token, unauthorized
from dashboard.auth.prompts import PromptProofs
from dashboard.auth.proxies import TrustedProxies
from dashboard.auth.viewers import ANONYMOUS, EVERYONE, Viewer, ViewerTokens, viewer_token
from dashboard.errors import HTTPError

if TYPE_CHECKING:
    from dashboard.config import Config


class Access:
    """The access rules of one server, from `auth` and `topics` in its config."""

    def __init__(self, config: Config) -> None:
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Decide by `config` from now on (a reload): requests already admitted are not asked again."""
        self.config = config
        self.viewers = viewers = config.auth.viewers
        self.public = {name for name, topic in config.topics.items() if topic.public}
        self.api_tokens = configured_api_tokens(config)
        self.tokens = ViewerTokens(viewers) if viewers is not None else None
        self.proxies = TrustedProxies(viewers.trusted_proxies if viewers is not None else [])
        secret = viewers.secret if viewers is not None else None
        self.proofs = PromptProofs(self.api_tokens, secret.get_secret_value() if secret else None)

    @property
    def enabled(self) -> bool:
        """Whether topics are private unless public (auth.viewers is configured)."""
        return self.viewers is not None

    # -- viewers -------------------------------------------------------------------------------
    def decode(self, token: str) -> dict[str, Any]:
        """The claims of a viewer token; HTTPError 401 when it is malformed, forged or expired."""
        assert self.tokens is not None
        return self.tokens.decode(token)

    def mint(self, topics: list[str], ttl: int, subject: str | None = None) -> str:
        """A viewer token for `topics` patterns, valid for `ttl` seconds (`dashboard token`)."""
        if self.tokens is None:
            raise ValueError(
                "minting needs auth.viewers.secret in the config (with public_key, sign tokens with "
                "your private key where it is kept)"
            )
        return self.tokens.mint(topics, ttl, subject)

    def viewer(self, request: HTTPConnection) -> Viewer:
        """Who `request` comes from (cached on it); 401 for a token that is not valid."""
        cached = request.scope.get("dashboard.viewer")
        if cached is not None:
            return cached
        viewer = self._identify(request)
        request.scope["dashboard.viewer"] = viewer
        return viewer

    def _identify(self, request: HTTPConnection) -> Viewer:
        if self.viewers is None or self.tokens is None:
            return EVERYONE
        user = self._proxy_user(request)
        if user is not None:
            return Viewer(user, tuple(self.viewers.users.get(user, ())), True)
        token = viewer_token(request)
        return ANONYMOUS if token is None else self.tokens.viewer(token)

    def _proxy_user(self, request: HTTPConnection) -> str | None:
        assert self.viewers is not None
        header = self.viewers.proxy_header
        if header is None:
            return None
        value = request.headers.get(header)
        if not value or not self.proxies.from_trusted_proxy(request):
            return None  # anyone can send the header: it counts only from the proxy
        return value.strip()

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
                raise unauthorized(
                    f"topic {topic!r} needs a viewer token (Authorization: Bearer, ?token=, "
                    "or open the dashboard with /?token=...)"
                )
            who = f"viewer {viewer.name!r}" if viewer.name else "this viewer token"
            raise HTTPError(403, f"{who} may not read topic {topic!r}", "forbidden_topic")
        return viewer

    # -- api tokens ----------------------------------------------------------------------------
    def api_token(self, request: HTTPConnection) -> str | None:
        """The api token the request carries (Bearer, or x-api-key as the Anthropic SDK sends it),
        when it is one of `auth.api_tokens` or a named key's."""
        return api_token(request, self.api_tokens)

    def require_api_token(self, request: HTTPConnection, what: str) -> str:
        """The api token the request carries; 401 saying that `what` needs one otherwise."""
        return require_api_token(request, self.api_tokens, what)

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

    # -- the page's prompts, and what the proxies say --------------------------------------------
    def prompt_proof(self, session: str) -> str:
        """What the page sends with its prompts: bound to its session cookie, valid for a day."""
        return self.proofs.issue(session)

    def has_prompt_proof(self, request: HTTPConnection) -> bool:
        """Whether the request carries a proof this server issued to the page, with that page's
        session cookie: a header alone, or a proof from another browser, is not enough."""
        return self.proofs.carried(request)

    def over_tls(self, request: HTTPConnection) -> bool:
        """Whether the request came over TLS (see `TrustedProxies.over_tls`)."""
        return self.proxies.over_tls(request)

    def client_address(self, scope: Scope) -> str:
        """Who a connection's streams are counted against (see `TrustedProxies.client_address`)."""
        return self.proxies.client_address(scope)
