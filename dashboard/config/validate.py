"""Validating a config: the schema's errors and the checks across sections (topic references,
feed options, unique names), every problem at once with its file:line."""

from __future__ import annotations

import re
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from dashboard.config.panels import VIEW_OPTIONS, NoOptions
from dashboard.config.schema import NAME_PATTERN, TOPIC_NAME, AuthConfig, Config
from dashboard.config.source import Source, read_config
from dashboard.errors import ConfigError, ConfigIssue, DashboardError, did_you_mean
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
        raise ConfigError([*issues, ConfigIssue(file, 1, "the config must be a mapping of sections", 1)])

    topics = data.get("topics")
    if isinstance(topics, dict):
        for name in topics:
            if not isinstance(name, str) or not TOPIC_NAME.fullmatch(name):
                source.issue(
                    ("topics", name),
                    f"bad topic name {name!r}: use 1-64 of a-z, 0-9, '_', '.', '-', "
                    "starting with a letter or digit",
                )

    # Feeds are resolved from the raw data, so their errors show even when other sections are wrong.
    resolved: dict[str, tuple[type[Feed], Feed.Options]] = {}
    if isinstance(topics, dict):
        for name, raw in topics.items():
            if isinstance(raw, dict) and isinstance(raw.get("feed"), str):
                found = _resolve_topic(name, raw["feed"], raw.get("options") or {}, source)
                if found is not None:
                    resolved[name] = found

    # Panels and rules are checked against the raw topics too, so these errors come in the same round;
    # not when `topics:` is misspelt, where its "did you mean" says all there is to say.
    known = topics if isinstance(topics, dict) else {}
    unknown = [key for key in data if key not in Config.model_fields]
    misspelt = topics is None and any(did_you_mean(key, ["topics"]) for key in unknown)
    for where in [] if misspelt else _topic_references(data):
        topic = _at(data, where)
        if isinstance(topic, str) and topic not in known:
            path = ".".join(str(p) for p in where)
            said = f"{path}: no topic named {topic!r}{did_you_mean(topic, known)}"
            source.issue(where, said, at_value=True)
        elif where[-1] == "notify" and topic in resolved and resolved[topic][0].default_view != "list":
            source.issue(
                where,
                f"{'.'.join(str(p) for p in where)}: topic {topic!r} does not carry notifications "
                "(use a topic of the notifications feed)",
            )
    _check_view_options(data, resolved, source)
    boards = data.get("dashboards")
    for name in boards if isinstance(boards, dict) else ():
        if not isinstance(name, str) or not TOPIC_NAME.fullmatch(name):
            source.issue(("dashboards", name), f"bad dashboard name {name!r}: use a-z, 0-9, '_', '.', '-'")

    config: Config | None = None
    try:
        config = Config.model_validate({**data, "source": file})
    except ValidationError as exc:
        for error in exc.errors():
            source.issue(error["loc"], describe(error, Config), about_value(error))

    if config is not None:
        for loc, message in [*key_problems(config.auth), *alert_problems(config)]:
            where = ".".join(str(part) for part in loc)
            source.issue(loc, f"{where}: {message}")
        for name, topic in config.topics.items():
            if name in resolved:
                topic._feed_class, topic._feed_options = resolved[name]
                for problem in topic._feed_class.config_problems(topic._feed_options, config):
                    source.issue(("topics", name, "options"), f"topics.{name}.options: {problem}")
    if issues:
        raise ConfigError(sorted(issues, key=lambda i: (i.line or 0, i.column or 0)))
    assert config is not None
    return config


def _panel_paths(data: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Where each panel is: under `panels:` and each board's `panels:`."""
    found: list[tuple[Any, ...]] = []

    def panels_at(*path: Any) -> None:
        panels = _at(data, path)
        for i, panel in enumerate(panels if isinstance(panels, list) else []):
            if isinstance(panel, dict):
                found.append((*path, i))

    panels_at("panels")
    boards = data.get("dashboards")
    for name, board in boards.items() if isinstance(boards, dict) else ():
        if isinstance(board, dict):
            panels_at("dashboards", name, "panels")
    return found


def _check_view_options(data: dict[str, Any], resolved: dict[str, tuple[type[Feed], Any]], source: Source):
    """Each panel's options against what its view takes (its own, or its feed's default view)."""
    for where in _panel_paths(data):
        panel = _at(data, where)
        view = panel.get("view")
        if view is None and panel.get("topic") in resolved:
            view = resolved[panel["topic"]][0].default_view
        model = VIEW_OPTIONS.get(view) if isinstance(view, str) else None
        if model is None or not isinstance(panel.get("options"), dict):
            continue  # an installed view checks its own; a wrong kind is the schema's to say
        if model is NoOptions and panel["options"]:
            path = ".".join(str(p) for p in where)
            source.issue((*where, "options"), f"{path}.options: the {view} view takes no options")
            continue
        try:
            model.model_validate(panel["options"])
        except ValidationError as exc:
            for error in exc.errors():
                loc = (*where, "options", *error["loc"])
                message = describe({**error, "loc": loc}, model, skip=len(where) + 1)
                source.issue(loc, message, about_value(error))


def _topic_references(data: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Where the config names a topic: panels, boards' panels, alert rules and what they notify."""
    found = [(*where, "topic") for where in _panel_paths(data)]
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
        source.issue(("topics", name, "feed"), f"topics.{name}.feed: {exc}", at_value=True)
        return None
    try:
        return cls, cls.Options.model_validate(options)
    except ValidationError as exc:
        for error in exc.errors():
            loc = ("topics", name, "options", *error["loc"])
            source.issue(loc, describe({**error, "loc": loc}, cls.Options, skip=3), about_value(error))
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


def fields_at(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """The keys the model at `path` under `model` takes (a dict's keys and list indexes are
    stepped over); empty when `path` leads elsewhere."""
    annotation: Any = model
    for part in path:
        while get_origin(annotation) in (dict, list, Union, UnionType) or get_origin(annotation) is not None:
            args = [a for a in get_args(annotation) if a is not type(None)]
            if get_origin(annotation) in (dict, list) and not isinstance(part, int | str):
                return []
            if get_origin(annotation) is dict:
                annotation = args[-1]
                break
            if get_origin(annotation) is list:
                annotation = args[0]
                break
            annotation = args[0] if args else Any
        else:
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                field = annotation.model_fields.get(str(part)) or next(
                    (f for f in annotation.model_fields.values() if f.alias == part), None
                )
                if field is None:
                    return []
                annotation = field.annotation
                continue
            return []
    while get_origin(annotation) in (Union, UnionType):
        annotation = next((a for a in get_args(annotation) if a is not type(None)), Any)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [field.alias or name for name, field in annotation.model_fields.items()]
    return []


#: The kinds of value the schema expects, in words, by pydantic's error type
EXPECTED = {
    "dict_type": "a mapping (keys indented under it, or {key: value})",
    "model_type": "a mapping (keys indented under it, or {key: value})",
    "model_attributes_type": "a mapping (keys indented under it, or {key: value})",
    "list_type": "a list ('- item' lines, or [a, b])",
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "finite_number": "a finite number",
}

#: Limits, in words: pydantic's error type -> how to say it (filled from the error's context)
LIMITS = {
    "greater_than": "must be more than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "string_too_short": "must be at least {min_length} characters long",
    "string_too_long": "must be at most {max_length} characters long",
    "too_short": "must hold at least {min_length} items",
    "too_long": "must hold at most {max_length} items",
    "literal_error": "must be one of {expected}",
    "enum": "must be one of {expected}",
}


#: The schema's patterns, in words
PATTERNS = {
    r"^https?://[^\s]+$": "must be an http:// or https:// URL",
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$": "must be 1-64 of A-Z, a-z, 0-9, '_', '.', '-', starting with "
    "a letter or digit",
    NAME_PATTERN: "must be 1-64 of a-z, 0-9, '_', '.', '-', starting with a letter or digit",
    r"^[A-Za-z0-9_.:{}-]{1,64}$": "must be 1-64 of A-Z, a-z, 0-9 and _ . : { } -",
    r"^[A-Za-z0-9-]{1,64}$": "must be a header name: 1-64 of A-Z, a-z, 0-9 and -",
    r"^[^.\s]+(\.[^.\s]+)*$": "must be a dotted path into the event's data, such as cpu.percent",
}


def kind_of(value: Any) -> str:
    """What a value from YAML is, in words."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "nothing"
    return "text"


def about_value(error: Any) -> bool:
    """Whether a schema error is about a value (shown at the value) rather than a key."""
    return error["type"] not in ("extra_forbidden", "missing") and error.get("input") is not None


def describe(error: Any, model: type[BaseModel], skip: int = 0) -> str:
    """A schema error in this project's words (pydantic's never reaches the user), with a hint:
    "did you mean" for a misspelt key, the expected shape for a value of the wrong kind. `model`
    is what validated `error["loc"][skip:]`."""
    loc = error["loc"]
    path = ".".join(str(p) for p in loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = ".".join(str(p) for p in loc[:-1]) or "the top level"
        known = fields_at(model, tuple(loc[skip:-1]))
        hint = did_you_mean(loc[-1], known) or (f"; it takes {', '.join(known)}" if known else "")
        return f"unknown key {loc[-1]!r} in {parent}{hint}"
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind in EXPECTED:
        got = kind_of(error.get("input"))
        hint = ""
        value = error.get("input")
        if (
            kind in ("dict_type", "model_type")
            and isinstance(value, str)
            and re.match(r"[\w.-]+:[^\s/]", value)
        ):
            key = value.partition(":")[0]
            hint = f": a key needs a space after its ':' ({key}: ..., not {key}:...)"
        elif kind in ("dict_type", "model_type") and got in ("text", "nothing"):
            hint = ": are its keys indented under it?"
        return f"{path}: expected {EXPECTED[kind]}, got {got}{hint}"
    if kind == "string_pattern_mismatch":
        pattern = (error.get("ctx") or {}).get("pattern", "")
        return f"{path}: {PATTERNS.get(pattern, 'is not of the allowed form')}"
    if kind in LIMITS:
        context = {k: str(v) for k, v in (error.get("ctx") or {}).items()}
        try:
            return f"{path}: {LIMITS[kind].format(**context)}"
        except KeyError:
            pass
    if kind == "value_error":  # one of the schema's own checks: its message is ours already
        return f"{path}: {error['ctx']['error']}"
    return f"{path}: this value is not valid here"
