"""Configuration: YAML -> pydantic models, `${VAR}` substitution, and errors with file:line."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from dashboard.broker import backend
from dashboard.errors import BrokerConfigError, ConfigError, ConfigIssue, DashboardError
from dashboard.feed import Feed, resolve_feed
from dashboard.views import VIEWS
from dashboard.webhooks import SECRET_PREFIX, hmac_key

TOPIC_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"  # boards, panel ids and alert rules, like topics
_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
#: Values a config may hold once its aliases are expanded; a real one holds hundreds, an alias
#: bomb ("billion laughs") billions.
MAX_NODES = 100_000

DEFAULT_CONFIG = """\
# Built-in default: works offline, with no keys.
ai:
  providers:
    - {name: simulated, type: simulated, models: [simulated]}
topics:
  assistant:
    feed: ai
    title: Assistant (simulated)
    history: 5000
    options: {model: simulated}
  spend:
    feed: spend
    title: AI spend today
  clock:
    feed: demo
    options: {mode: clock, interval: 1.0}
  walk:
    feed: demo
    options: {mode: walk, interval: 0.5}
"""


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
    url: str = "memory://"
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

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        try:
            backend(url.partition("://")[0] if "://" in url else "")
        except BrokerConfigError as exc:
            raise ValueError(f"unsupported broker URL {url!r}: {exc}") from None
        return url


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

    def key_problems(self) -> list[tuple[tuple[Any, ...], str]]:
        """(location, message) of each api key whose name or token is taken, or whose token is empty."""
        problems: list[tuple[tuple[Any, ...], str]] = []
        names: set[str] = set()
        tokens: set[str] = set(self.api_tokens)
        for i, key in enumerate(self.api_keys):
            token = key.token.get_secret_value()
            if key.name in names:
                problems.append((("auth", "api_keys", i, "name"), f"api key name {key.name!r} is used twice"))
            if not token.strip():
                problems.append(
                    (("auth", "api_keys", i, "token"), f"api key {key.name!r} has an empty token")
                )
            elif token in tokens:
                problems.append(
                    (
                        ("auth", "api_keys", i, "token"),
                        f"the token of api key {key.name!r} is also another key's or in api_tokens",
                    )
                )
            names.add(key.name)
            tokens.add(token)
        return problems


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

    @field_validator("type")
    @classmethod
    def _known_dialect(cls, value: str) -> str:
        from dashboard.relay import dialects  # the relay imports this module

        if value == "simulated":
            return value
        try:
            dialects.get(value)
        except KeyError:
            known = ", ".join([*dialects.known(), "simulated"])
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
    """OpenAI-compatible providers behind /v1 and the `ai` feed; the first whose models match is used."""

    providers: list[AIProvider] = Field(default_factory=_simulated_only)

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
    view: str | None = Field(None, description="a view of dashboard/static/views/ (default: the feed's)")
    size: Literal["s", "m", "l", "xl"] = "m"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("view")
    @classmethod
    def _known_view(cls, view: str | None) -> str | None:
        if view is not None and view not in VIEWS:
            raise ValueError(f"unknown view {view!r}: use one of {', '.join(VIEWS)}")
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

    def alert_problems(self) -> list[tuple[tuple[Any, ...], str]]:
        """(location, message) of each alert rule whose name an earlier rule has."""
        problems: list[tuple[tuple[Any, ...], str]] = []
        names: set[str] = set()
        for i, rule in enumerate(self.alerts):
            if rule.name in names:
                problems.append((("alerts", i, "name"), f"alert name {rule.name!r} is used twice"))
            names.add(rule.name)
        return problems

    def warnings(self) -> list[str]:
        """What is valid but most likely not meant (`dashboard check` and the startup lines say it)."""
        budgets = [key.name for key in self.auth.api_keys if key.daily_usd is not None]
        unpriced = [p.name for p in self.ai.providers if p.prices is None and p.type != "simulated"]
        if not (budgets and unpriced):
            return []
        return [
            f"provider {name!r} has no prices: its requests count nothing against the daily_usd "
            f"budget of api key(s) {', '.join(budgets)} (set ai.providers[].prices)"
            for name in unpriced
        ]


# -- loading ---------------------------------------------------------------------------------
class _Source:
    """A YAML document as plain data, with the line of every path in it."""

    def __init__(self, text: str, file: str) -> None:
        self.file = file
        self.lines: dict[tuple[Any, ...], int] = {}
        self.issues: list[ConfigIssue] = []
        self._flattened: set[int] = set()
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_expanded_size(node)
            self.data = self._build(loader, node, ()) if node is not None else {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc)
            self.issues.append(ConfigIssue(file, mark.line + 1 if mark else None, f"invalid YAML: {problem}"))
            self.data = {}
        except RecursionError:
            line = loader.get_mark().line + 1
            self.issues.append(ConfigIssue(file, line, "invalid YAML: nested too deeply"))
            self.data = {}
        finally:
            loader.dispose()

    def _build(self, loader: yaml.SafeLoader, node: yaml.Node, path: tuple[Any, ...]) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            own: set[Any] = set()  # a key written twice is an error; one from a `<<:` merge is not
            # An anchored mapping met again through an alias is already flattened: not checked again.
            first_visit = id(node) not in self._flattened
            self._flattened.add(id(node))
            for key_node, _ in node.value if first_visit else ():
                if key_node.tag != "tag:yaml.org,2002:merge":
                    key = loader.construct_object(key_node)
                    if key in own:
                        self._issue(key_node.start_mark.line + 1, f"duplicate key {key!r}")
                    own.add(key)
            loader.flatten_mapping(node)  # merged keys first, so the node's own keys win
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node)
                self.lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = self._build(loader, value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._build(loader, item, (*path, i)) for i, item in enumerate(node.value)]
        value = loader.construct_object(node)
        if isinstance(value, str):
            value = self._substitute(value, node.start_mark.line + 1)
        return value

    def _substitute(self, value: str, line: int) -> str:
        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            self._issue(
                line,
                f"environment variable {name} is not set (write ${{{name}:-default}} for a default)",
            )
            return ""

        return _ENV_VAR.sub(replace, value)

    def _issue(self, line: int | None, message: str) -> None:
        self.issues.append(ConfigIssue(self.file, line, message))

    def line_of(self, loc: tuple[Any, ...]) -> int | None:
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None


def _check_expanded_size(root: yaml.Node) -> None:
    """A YAMLError at the first value that holds more than MAX_NODES values once its aliases are
    expanded, or that holds itself. Each node is sized once, so this is linear in the text."""
    sizes: dict[int, int] = {}  # id(node) -> expanded size; -1 while its children are being sized

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            if known < 0:
                raise _node_error(node, "an alias refers to a value that contains it")
            return known
        sizes[id(node)] = -1
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        total = 1 + sum(size(child) for child in children)
        if total > MAX_NODES:
            raise _node_error(
                node, f"this value holds more than {MAX_NODES} values once its aliases are expanded"
            )
        sizes[id(node)] = total
        return total

    size(root)


def _node_error(node: yaml.Node, problem: str) -> yaml.YAMLError:
    return yaml.MarkedYAMLError(problem=problem, problem_mark=node.start_mark)


def _describe(error: dict[str, Any], model: type[BaseModel] | None = None) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        parent = ".".join(str(p) for p in error["loc"][:-1]) or "the top level"
        return f"unknown key {error['loc'][-1]!r} in {parent}"
    if error["type"] == "missing":
        return f"{loc}: required key is missing"
    return f"{loc}: {error['msg']}"


def parse_config(text: str, file: str = "<config>") -> Config:
    """Validate a config given as YAML text; ConfigError lists every problem at once."""
    source = _Source(text, file)
    issues = source.issues
    data = source.data
    if not isinstance(data, dict):
        raise ConfigError([*issues, ConfigIssue(file, 1, "the config must be a mapping of sections")])

    topics = data.get("topics")
    if isinstance(topics, dict):
        for name in topics:
            if not isinstance(name, str) or not TOPIC_NAME.fullmatch(name):
                issues.append(
                    ConfigIssue(
                        file,
                        source.line_of(("topics", name)),
                        f"bad topic name {name!r}: use 1-64 of a-z, 0-9, '_', '.', '-', "
                        "starting with a letter or digit",
                    )
                )

    # Feeds are resolved from the raw data, so their errors show even when other sections are wrong.
    resolved: dict[str, tuple[type[Feed], Feed.Options]] = {}
    if isinstance(topics, dict):
        for name, raw in topics.items():
            if isinstance(raw, dict) and isinstance(raw.get("feed"), str):
                found = _resolve_topic(name, raw["feed"], raw.get("options") or {}, source)
                if found is not None:
                    resolved[name] = found

    # Panels and rules are checked against the raw topics too, so these errors come in the same round.
    known = topics if isinstance(topics, dict) else {}
    for where in _topic_references(data):
        topic = _at(data, where)
        if isinstance(topic, str) and topic not in known:
            path = ".".join(str(p) for p in where)
            issues.append(ConfigIssue(file, source.line_of(where), f"{path}: no topic named {topic!r}"))
        elif where[-1] == "notify" and topic in resolved and resolved[topic][0].default_view != "list":
            issues.append(
                ConfigIssue(
                    file,
                    source.line_of(where),
                    f"{'.'.join(str(p) for p in where)}: topic {topic!r} does not carry notifications "
                    "(use a topic of the notifications feed)",
                )
            )
    boards = data.get("dashboards")
    for name in boards if isinstance(boards, dict) else ():
        if not isinstance(name, str) or not TOPIC_NAME.fullmatch(name):
            line = source.line_of(("dashboards", name))
            message = f"bad dashboard name {name!r}: use a-z, 0-9, '_', '.', '-'"
            issues.append(ConfigIssue(file, line, message))

    config: Config | None = None
    try:
        config = Config.model_validate({**data, "source": file})
    except ValidationError as exc:
        for error in exc.errors():
            issues.append(ConfigIssue(file, source.line_of(error["loc"]), _describe(error)))

    if config is not None:
        for loc, message in [*config.auth.key_problems(), *config.alert_problems()]:
            where = ".".join(str(part) for part in loc)
            issues.append(ConfigIssue(file, source.line_of(loc), f"{where}: {message}"))
        for name, topic in config.topics.items():
            if name in resolved:
                topic._feed_class, topic._feed_options = resolved[name]
                for problem in topic._feed_class.config_problems(topic._feed_options, config):
                    line = source.line_of(("topics", name, "options"))
                    issues.append(ConfigIssue(file, line, f"topics.{name}.options: {problem}"))
    if issues:
        raise ConfigError(sorted(issues, key=lambda i: i.line or 0))
    assert config is not None
    return config


def _topic_references(data: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Where the config names a topic: panels, boards' panels, alert rules and what they notify."""
    found: list[tuple[Any, ...]] = []

    def panels_at(*path: Any) -> None:
        panels = _at(data, path)
        for i, panel in enumerate(panels if isinstance(panels, list) else []):
            if isinstance(panel, dict):
                found.append((*path, i, "topic"))

    panels_at("panels")
    boards = data.get("dashboards")
    for name, board in boards.items() if isinstance(boards, dict) else ():
        if isinstance(board, dict):
            panels_at("dashboards", name, "panels")
    rules = data.get("alerts")
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        if isinstance(rule, dict):
            found += [("alerts", i, key) for key in ("topic", "notify") if key in rule]
    return found


def _at(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        if isinstance(data, dict):
            data = data.get(key)
        elif isinstance(data, list) and isinstance(key, int) and key < len(data):
            data = data[key]
        else:
            return None
    return data


def _resolve_topic(
    name: str, feed: str, options: Any, source: _Source
) -> tuple[type[Feed], Feed.Options] | None:
    """The feed class and validated options of one topic; None after recording why not."""
    try:
        cls = resolve_feed(feed)
    except DashboardError as exc:
        source._issue(source.line_of(("topics", name, "feed")), f"topics.{name}.feed: {exc}")
        return None
    try:
        return cls, cls.Options.model_validate(options)
    except ValidationError as exc:
        for error in exc.errors():
            loc = ("topics", name, "options", *error["loc"])
            source._issue(source.line_of(loc), _describe({**error, "loc": loc}))
        return None


def load_config(path: str | Path | None = None) -> Config:
    """The config at `path`; else ./config.yaml; else the built-in offline default."""
    if path is None:
        default = Path("config.yaml")
        if not default.exists():
            return parse_config(DEFAULT_CONFIG, "<built-in default>")
        path = default
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(path), None, f"cannot read config: {exc.strerror}")]) from exc
    return parse_config(text, str(path))
