"""The configuration's schema: pydantic models, the one source of truth for every key, its
default and its checks within a section."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from dashboard.broker import backend
from dashboard.errors import BrokerConfigError, did_you_mean
from dashboard.feed import Feed
from dashboard.plugins import DIALECTS
from dashboard.plugins import VIEWS as VIEW_REGISTRY
from dashboard.views import VIEWS
from dashboard.webhooks import SECRET_PREFIX, hmac_key

TOPIC_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"  # boards, panel ids and alert rules, like topics


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    keepalive: float = Field(15.0, gt=0, description="seconds between keepalive comments on idle streams")
    retry_ms: int = Field(2000, ge=0, description="the `retry:` hint sent at the start of each stream")
    max_backlog: int = Field(
        1024, ge=1, description="frames a subscriber may fall behind before it is cut off"
    )
    max_body: int = Field(1 << 20, ge=1, description="largest request body accepted, in bytes")
    header_timeout: float = Field(
        10.0,
        gt=0,
        le=30,
        description="seconds a request head may take to arrive in full, from its first byte (from the "
        "connection while nothing came); then the connection is closed (nginx's client_header_timeout)",
    )
    max_streams_per_client: int = Field(
        100,
        ge=1,
        description="open streams one client address may hold; more are answered 429 too_many_streams",
    )
    allowed_hosts: list[str] | None = Field(
        None,
        description="Host header values served (`*` for any, `*.example.com`); default: the loopback "
        "names on a loopback bind, any host otherwise. Others are answered 421 (DNS rebinding)",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="origins (https://wiki.example.com) whose pages may read /sse and /api; none by default",
    )
    cors_credentials: bool = Field(False, description="let those origins send cookies (viewer sessions)")
    frame_ancestors: list[str] = Field(
        default_factory=list,
        description="origins whose pages may frame /embed/... panels (CSP frame-ancestors); none by default",
    )

    @field_validator("cors_origins", "frame_ancestors")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin: write scheme://host[:port], no path")
        return origins

    @model_validator(mode="after")
    def _no_credentials_for_everyone(self) -> ServerConfig:
        if self.cors_credentials and "*" in self.cors_origins:
            raise ValueError("cors_credentials needs named cors_origins, not '*' (any site could read)")
        return self


class BrokerConfig(Strict):
    url: str = Field(
        "sqlite:///dashboard.db",
        description="where events, the AI ledger, claims and alert states are kept: sqlite:///file.db "
        "(relative to the folder the server starts in; sqlite:////abs/path.db), memory:// (nothing on "
        "disk) or redis://host:6379/0 (shared by several processes)",
    )
    history: int = Field(1000, ge=1, description="events kept per topic for replay, unless the topic says")
    prefix: str = Field(
        "dashboard",
        pattern=r"^[A-Za-z0-9_.:{}-]{1,64}$",
        description="Redis only: the first part of every key, so several dashboards can share one Redis",
    )
    lease_ttl: float = Field(
        5.0,
        ge=0.5,
        le=60,
        description="Redis only: seconds a feed's lease outlives an instance that stopped renewing it",
    )
    min_replicas: int = Field(
        0,
        ge=0,
        le=16,
        description="Redis only: a publish is acknowledged once this many replicas hold the event (WAIT), "
        "else refused with 503; 0 acknowledges what the primary stored, which a failover may lose",
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        try:
            backend(url.partition("://")[0] if "://" in url else "")
        except BrokerConfigError as exc:
            raise ValueError(f"unsupported broker URL {url!r}: {exc}") from None
        return url

    @model_validator(mode="after")
    def _replicas_need_redis(self) -> BrokerConfig:
        if self.min_replicas and not self.url.partition("://")[0].startswith("redis"):
            raise ValueError("min_replicas concerns Redis only: use a redis:// or redis+sentinel:// url")
        return self


class ViewersConfig(Strict):
    """Who may read which topics: signed viewer tokens (JWT) and/or an auth proxy's header."""

    secret: SecretStr | None = Field(None, description="HS256 key that signs viewer tokens")
    public_key: str | None = Field(None, description="PEM public key: viewer tokens are RS256 or ES256")
    proxy_header: str | None = Field(
        None, pattern=r"^[A-Za-z0-9-]{1,64}$", description="identity header set by a trusted auth proxy"
    )
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=list,
        description="addresses whose proxy_header and X-Forwarded-Proto count, and whose X-Forwarded-For "
        "names the client that server.max_streams_per_client counts (CIDR or single address)",
    )
    users: dict[str, list[str]] = Field(
        default_factory=dict, description="proxy identities -> topic patterns they may read"
    )

    @field_validator("secret", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _complete(self) -> ViewersConfig:
        if self.secret is None and self.public_key is None and self.proxy_header is None:
            raise ValueError("set secret or public_key (viewer tokens), or proxy_header (an auth proxy)")
        if self.secret is not None and self.public_key is not None:
            raise ValueError("set either secret (HS256) or public_key (RS256/ES256), not both")
        if self.proxy_header is not None and not self.trusted_proxies:
            raise ValueError(
                "proxy_header needs trusted_proxies: the addresses of the proxy that sets it "
                "(anyone else could send the header too)"
            )
        if self.public_key is not None:
            from dashboard.security import check_public_key

            check_public_key(self.public_key)
        return self


class APIKey(Strict):
    """A named token for the AI relay and prompts, with its own limits (absent: no limit)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="shown in spend and metrics")
    token: SecretStr = Field(description="the Bearer (or x-api-key) token; never shown anywhere")
    rpm: int | None = Field(None, ge=0, description="requests per minute (sliding window)")
    tpm: int | None = Field(None, ge=0, description="tokens (prompt and completion) per minute")
    daily_usd: float | None = Field(
        None, ge=0, description="spend per UTC day, priced by ai.providers' prices"
    )
    models: list[str] = Field(
        default_factory=lambda: ["*"], description="fnmatch patterns of models it may use"
    )
    default_max_tokens: int = Field(
        1024, ge=1, description="completion tokens reserved for a request that sets no max_tokens"
    )


class AuthConfig(Strict):
    publish_tokens: list[str] = Field(default_factory=list)
    api_tokens: list[str] = Field(default_factory=list)
    api_keys: list[APIKey] = Field(default_factory=list, description="named tokens with limits and budgets")
    viewers: ViewersConfig | None = Field(None, description="when set, topics are private unless public")
    open_on_network: list[Literal["ai", "publish"]] = Field(
        default_factory=list,
        description="serve these without tokens on a non-loopback bind anyway (else serve refuses)",
    )

    @field_validator("publish_tokens", "api_tokens")
    @classmethod
    def _drop_empty_tokens(cls, tokens: list[str]) -> list[str]:
        """An empty entry (`${TOKEN:-}` while TOKEN is unset) is no token: it opens nothing."""
        return [t for t in tokens if t.strip()]


class SupervisorConfig(Strict):
    initial_backoff: float = Field(1.0, gt=0)
    max_backoff: float = Field(60.0, gt=0)


class AITimeouts(Strict):
    """Seconds each phase of an upstream request may take; each has its own error when it expires."""

    connect: float = Field(5.0, gt=0, description="to open the connection to the provider")
    first_token: float = Field(60.0, gt=0, description="from sending the request to the first event")
    idle: float = Field(30.0, gt=0, description="longest gap between two events of a stream")
    total: float = Field(600.0, gt=0, description="the whole completion, retries included")


class AIPrices(Strict):
    """US dollars per million tokens, for the cost reported with each completion."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)


class AIRetries(Strict):
    """Retries before the first token is relayed: connect errors, 429 and 5xx."""

    attempts: int = Field(3, ge=1, description="tries per provider, the first included")
    backoff: float = Field(0.5, ge=0, description="first backoff in seconds, doubled each retry, jittered")
    max_backoff: float = Field(8.0, ge=0)
    max_retry_after: float = Field(
        30.0, ge=0, description="longest Retry-After honoured; a longer one moves on to the next provider"
    )


class AISimulation(Strict):
    """The pace of the built-in simulated provider."""

    tokens_per_s: float = Field(40.0, gt=0)
    first_token_ms: float = Field(300.0, ge=0)


class AIProvider(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    type: str = Field(
        "openai",
        description="its API dialect: openai, anthropic, one a package registers (or simulated: built in)",
    )
    base_url: str | None = Field(
        None, description="e.g. https://api.openai.com/v1 or https://api.anthropic.com/v1"
    )
    api_key: SecretStr | None = Field(None, description="from the environment: ${OPENAI_API_KEY}")
    models: list[str] = Field(default_factory=lambda: ["*"], description="fnmatch patterns of model names")
    headers: dict[str, str] = Field(default_factory=dict)
    timeouts: AITimeouts = Field(default_factory=AITimeouts)
    retries: AIRetries = Field(default_factory=AIRetries)
    prices: AIPrices | None = None
    include_usage: bool = Field(
        True, description="ask streams for a usage chunk (stream_options.include_usage) to measure tokens"
    )
    simulation: AISimulation = Field(default_factory=AISimulation)
    max_concurrency: int | None = Field(
        None, ge=1, description="requests in flight to this provider at most, per server process"
    )
    rpm: int | None = Field(None, ge=1, description="requests per minute sent to this provider, per process")
    tpm: int | None = Field(
        None, ge=1, description="tokens per minute (prompt estimate plus max_tokens, then usage), per process"
    )
    max_queue: int = Field(
        100, ge=0, description="requests waiting for room at this provider; one more is refused with 429"
    )
    cooldown: float = Field(
        30.0, ge=0, description="seconds a provider that failed 3 times in a row is passed over (0: never)"
    )

    @field_validator("type")
    @classmethod
    def _known_dialect(cls, value: str) -> str:
        if value == "simulated":
            return value
        try:
            DIALECTS.load(value)  # a plugin that does not load is reported here, not at start
        except KeyError:
            known = ", ".join([*DIALECTS.names(), "simulated"])
            raise ValueError(f"unknown provider type {value!r} (known: {known})") from None
        except Exception as exc:
            raise ValueError(f"the dialect of provider type {value!r} does not load: {exc}") from None
        return value

    @model_validator(mode="after")
    def _needs_base_url(self) -> AIProvider:
        if self.type != "simulated" and not self.base_url:
            raise ValueError(f"provider {self.name!r} needs a base_url (or type: simulated)")
        return self


def _simulated_only() -> list[AIProvider]:
    return [AIProvider(name="simulated", type="simulated", models=["simulated"])]


class AIConfig(Strict):
    """OpenAI-compatible providers behind /v1 and the `ai` feed; those whose models match are tried in
    the `routing` order."""

    providers: list[AIProvider] = Field(default_factory=_simulated_only)
    routing: Literal["fallback", "round_robin", "least_busy"] = Field(
        "fallback",
        description="the order providers serving one model are tried in: as configured, taking turns, "
        "or the one with the fewest requests in flight first",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> AIConfig:
        names = [p.name for p in self.providers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"provider names must be unique: {', '.join(duplicates)}")
        return self


class TopicConfig(Strict):
    feed: str
    options: dict[str, Any] = Field(default_factory=dict)
    history: int | None = Field(None, ge=1)
    title: str | None = None
    public: bool = Field(False, description="with auth.viewers: readable without a viewer token")

    _feed_class: type[Feed] | None = PrivateAttr(None)
    _feed_options: Any = PrivateAttr(None)

    @property
    def feed_class(self) -> type[Feed]:
        assert self._feed_class is not None, "topic not resolved"
        return self._feed_class

    def make_feed(self, topic: str) -> Feed:
        return self.feed_class(topic, self._feed_options)


class PanelConfig(Strict):
    topic: str
    id: str | None = Field(None, pattern=NAME_PATTERN, description="names the panel in /embed/{board}/{id}")
    title: str | None = None
    view: str | None = Field(None, description="a built-in or installed view (default: the feed's)")
    size: Literal["s", "m", "l", "xl"] = "m"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("view")
    @classmethod
    def _known_view(cls, view: str | None) -> str | None:
        if view is not None and view not in VIEWS:
            raise ValueError(
                f"unknown view {view!r}{did_you_mean(view, VIEWS)}: use one of {', '.join(VIEWS)}"
            )
        if view is not None:
            try:
                VIEW_REGISTRY.load(view)  # an installed view whose script is missing is reported here
            except (OSError, TypeError, ImportError) as exc:
                raise ValueError(f"the script of view {view!r} does not load: {exc}") from None
        return view


class DashboardConfig(Strict):
    """One board: its title and panels, served at /d/{name}."""

    title: str | None = None
    panels: list[PanelConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> DashboardConfig:
        ids = [p.id for p in self.panels if p.id is not None]
        if len(ids) != len(set(ids)):
            raise ValueError(f"panel ids must be unique on a board: {', '.join(sorted(ids))}")
        return self


class WebhookConfig(Strict):
    """An outbound delivery of an alert rule, signed with the Standard Webhooks headers."""

    url: str = Field(pattern=r"^https?://[^\s]+$")
    secret: SecretStr = Field(description="signs each delivery: whsec_<base64>, as Standard Webhooks has it")
    timeout: float = Field(10.0, gt=0, le=120, description="seconds one attempt may take")
    attempts: int = Field(5, ge=1, le=20, description="tries per delivery, the first included")

    @field_validator("secret")
    @classmethod
    def _usable_secret(cls, secret: SecretStr) -> SecretStr:
        value = secret.get_secret_value()
        if not value.startswith(SECRET_PREFIX):  # a receiver decodes the base64 after the prefix
            what = "must not be empty" if not value else "is written"
            raise ValueError(f"a webhook secret {what} (whsec_ followed by base64)")
        hmac_key(value)  # ValueError when it is not base64, or empty
        return secret


class AlertRule(Strict):
    """A threshold on a field of a topic's events: ok -> pending -> firing -> ok."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=NAME_PATTERN)
    topic: str
    field: str = Field(pattern=r"^[^.\s]+(\.[^.\s]+)*$", description="dotted path into the event's JSON data")
    above: float | None = None
    below: float | None = None
    for_: float = Field(0.0, alias="for", ge=0, description="seconds the condition holds before firing")
    notify: str = Field(description="a notifications topic: told of each change, of firing and resolving")
    webhooks: list[WebhookConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_threshold(self) -> AlertRule:
        if (self.above is None) == (self.below is None):
            raise ValueError(f"alert {self.name!r}: give exactly one of above or below")
        return self


class Config(Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    supervisor: SupervisorConfig = Field(default_factory=SupervisorConfig)
    ai: AIConfig = Field(default_factory=AIConfig)
    topics: dict[str, TopicConfig] = Field(default_factory=dict)
    panels: list[PanelConfig] | None = None
    dashboards: dict[str, DashboardConfig] | None = None
    alerts: list[AlertRule] = Field(default_factory=list)

    source: str = Field("<default>", exclude=True, description="where the config was read from")

    def bound_to(self, host: str) -> Config:
        """This config as served on `host` (`serve --host`): what a bind opens depends on it."""
        server = self.server.model_copy(update={"host": host})
        return self.model_copy(update={"server": server})

    def warnings(self) -> list[str]:
        """What is valid but most likely not meant (`dashboard check` and the startup lines say it)."""
        warnings = []
        if "topics" not in self.model_fields_set:  # `topics: {}` is a relay alone, on purpose
            warnings.append(
                "no topics: the page will be empty; add some under `topics:`, e.g. clock: {feed: demo}"
            )
        shown = {panel.topic for panel in self.panels or []}
        for board in (self.dashboards or {}).values():
            shown |= {panel.topic for panel in board.panels}
        unshown = [name for name in self.topics if name not in shown]
        if (self.panels is not None or self.dashboards) and unshown:
            warnings.append(
                f"topic(s) {', '.join(unshown)} have no panel: the page lists only the panels under "
                "`panels:` (or `dashboards:`); add one, e.g. - {topic: " + unshown[0] + "}"
            )
        budgets = [key.name for key in self.auth.api_keys if key.daily_usd is not None]
        unpriced = [p.name for p in self.ai.providers if p.prices is None and p.type != "simulated"]
        if budgets:
            warnings += [
                f"provider {name!r} has no prices: its requests count nothing against the daily_usd "
                f"budget of api key(s) {', '.join(budgets)} (set ai.providers[].prices)"
                for name in unpriced
            ]
        return warnings
