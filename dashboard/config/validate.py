"""Validating a config: the schema's errors and the checks across sections (topic references,
feed options, unique names), every problem at once with its file:line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dashboard.config.schema import TOPIC_NAME, AuthConfig, Config
from dashboard.config.source import Source, read_config
from dashboard.errors import ConfigError, ConfigIssue, DashboardError
from dashboard.feed import Feed, resolve_feed


def load_config(path: str | Path | None = None) -> Config:
    """The config at `path`; else ./config.yaml; else the built-in offline default."""
    return parse_config(*read_config(path))


def parse_config(text: str, file: str = "<config>") -> Config:
    """Validate a config given as YAML text; ConfigError lists every problem at once."""
    source = Source(text, file)
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
        for loc, message in [*key_problems(config.auth), *alert_problems(config)]:
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
    name: str, feed: str, options: Any, source: Source
) -> tuple[type[Feed], Feed.Options] | None:
    """The feed class and validated options of one topic; None after recording why not."""
    try:
        cls = resolve_feed(feed)
    except DashboardError as exc:
        source.issue(source.line_of(("topics", name, "feed")), f"topics.{name}.feed: {exc}")
        return None
    try:
        return cls, cls.Options.model_validate(options)
    except ValidationError as exc:
        for error in exc.errors():
            loc = ("topics", name, "options", *error["loc"])
            source.issue(source.line_of(loc), _describe({**error, "loc": loc}))
        return None


def key_problems(auth: AuthConfig) -> list[tuple[tuple[Any, ...], str]]:
    """(location, message) of each api key whose name or token is taken, or whose token is empty."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    names: set[str] = set()
    tokens: set[str] = set(auth.api_tokens)
    for i, key in enumerate(auth.api_keys):
        token = key.token.get_secret_value()
        if key.name in names:
            problems.append((("auth", "api_keys", i, "name"), f"api key name {key.name!r} is used twice"))
        if not token.strip():
            problems.append((("auth", "api_keys", i, "token"), f"api key {key.name!r} has an empty token"))
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


def alert_problems(config: Config) -> list[tuple[tuple[Any, ...], str]]:
    """(location, message) of each alert rule whose name an earlier rule has."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    names: set[str] = set()
    for i, rule in enumerate(config.alerts):
        if rule.name in names:
            problems.append((("alerts", i, "name"), f"alert name {rule.name!r} is used twice"))
        names.add(rule.name)
    return problems


def _describe(error: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        parent = ".".join(str(p) for p in error["loc"][:-1]) or "the top level"
        return f"unknown key {error['loc'][-1]!r} in {parent}"
    if error["type"] == "missing":
        return f"{loc}: required key is missing"
    return f"{loc}: {error['msg']}"
