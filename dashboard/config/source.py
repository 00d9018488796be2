"""Where config text comes from and how it is read: YAML as plain data with the file:line of every
path in it, `${VAR}` expansion, and bounds on aliases and size."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from dashboard.errors import ConfigError, ConfigIssue

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


Position = tuple[int, int]  # line and column, from 1


def _position(mark: yaml.Mark) -> Position:
    return mark.line + 1, mark.column + 1


class Source:
    """A YAML document as plain data, with the line and column of every path in it."""

    def __init__(self, text: str, file: str) -> None:
        self.file = file
        self.text_lines = text.splitlines()
        self.positions: dict[tuple[Any, ...], Position] = {}  # where each key is written
        self.values: dict[tuple[Any, ...], Position] = {}  # ... and where its value starts
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
            where = _position(mark) if mark else (None, None)
            opened = getattr(exc, "context_mark", None)
            if opened and (getattr(exc, "problem", None) or "").startswith(
                ("expected ',' or", "found unexpected end")
            ):
                line, column = _position(opened)
                self.issue_at(
                    where, f"invalid YAML: {yaml_problem(exc)} (opened at line {line}, column {column})"
                )
            else:
                self.issue_at(where, f"invalid YAML: {yaml_problem(exc)}")
            self.data = {}
        except RecursionError:
            self.issue_at(_position(loader.get_mark()), "invalid YAML: nested too deeply")
            self.data = {}
        finally:
            loader.dispose()

    def _build(self, loader: yaml.SafeLoader, node: yaml.Node, path: tuple[Any, ...]) -> Any:
        self.positions.setdefault(path, _position(node.start_mark))
        self.values.setdefault(path, _position(node.start_mark))
        if isinstance(node, yaml.MappingNode):
            own: set[Any] = set()  # a key written twice is an error; one from a `<<:` merge is not
            # An anchored mapping met again through an alias is already flattened: not checked again.
            first_visit = id(node) not in self._flattened
            self._flattened.add(id(node))
            for key_node, _ in node.value if first_visit else ():
                if key_node.tag != "tag:yaml.org,2002:merge":
                    key = loader.construct_object(key_node)
                    if key in own:
                        self.issue_at(_position(key_node.start_mark), f"duplicate key {key!r}")
                    own.add(key)
            loader.flatten_mapping(node)  # merged keys first, so the node's own keys win
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node)
                self.positions[(*path, key)] = _position(key_node.start_mark)
                out[key] = self._build(loader, value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._build(loader, item, (*path, i)) for i, item in enumerate(node.value)]
        value = loader.construct_object(node)
        if isinstance(value, str):
            value = self._substitute(value, _position(node.start_mark))
        return value

    def _substitute(self, value: str, at: Position) -> str:
        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            self.issue_at(
                at, f"environment variable {name} is not set (write ${{{name}:-default}} for a default)"
            )
            return ""

        return _ENV_VAR.sub(replace, value)

    def issue_at(self, at: Position | tuple[None, None], message: str) -> None:
        line, column = at
        excerpt = ""
        if line is not None and column is not None and line <= len(self.text_lines):
            text = self.text_lines[line - 1].replace("\t", " ")
            if len(text) <= 200:  # a line of a config, not of something else
                excerpt = f"{text}\n{' ' * (column - 1)}^"
        self.issues.append(ConfigIssue(self.file, line, message, column, excerpt))

    def issue(self, loc: tuple[Any, ...], message: str, at_value: bool = False) -> None:
        """A problem with the key at `loc` (a path such as ("topics", "cpu", "feed")), or with
        its value."""
        self.issue_at(self.position(loc, at_value), message)

    def position(self, loc: tuple[Any, ...], at_value: bool = False) -> Position | tuple[None, None]:
        """Where the key at `loc` (or its value) is written, or its nearest parent's key."""
        if at_value and loc in self.values:
            return self.values[loc]
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.positions:
                return self.positions[loc[:end]]
        return None, None


#: PyYAML's problems, in this project's words, with what to do (matched on the start of its text)
YAML_PROBLEMS = {
    "expected <block end>": "this line is indented differently from the lines around it: keys of one "
    "mapping start in the same column, and a value's own keys are indented under it (spaces only)",
    "mapping values are not allowed here": "a ': ' where no key may start: is this line indented deeper "
    "than the keys above it? (or put the key on a line of its own, or quote a value that contains ': ')",
    "could not find expected ':'": "a key without ':' after it, or a line indented under a plain value",
    "found character '\\t' that cannot start any token": "a tab: indent with spaces only",
    "expected ',' or '}'": "a '{' that is not closed by '}', or items without a ',' between them",
    "expected ',' or ']'": "a '[' that is not closed by ']', or items without a ',' between them",
    "found unexpected end of stream": "a quote that is never closed",
    "found undefined alias": "a '*name' with no '&name' before it",
    "expected alphabetic or numeric character": "a '*' or '&' without a name after it (quote a value "
    "that starts with * or &)",
    "found character": "a character that cannot start a value here (quote a value that starts with @ or `)",
    "did not find expected key": "a line indented differently from the keys around it",
    "did not find expected '-' indicator": "a list item indented differently from the items before it",
}


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong, in this project's words: PyYAML's wording never reaches the user."""
    problem = getattr(exc, "problem", None) or ""
    for start, said in YAML_PROBLEMS.items():
        if problem.startswith(start):
            return said
    if isinstance(exc, yaml.MarkedYAMLError) and exc.context is None and problem and exc.problem_mark:
        return problem  # one of this module's own (an alias bomb, a value holding itself)
    return "this is not valid YAML here: check the indentation (spaces only) and the quotes around it"


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


def read_config(path: str | Path | None = None) -> tuple[str, str]:
    """The text of the config at `path`, and the name it is reported under; without a path
    ./config.yaml, else the built-in offline default."""
    if path is None:
        default = Path("config.yaml")
        if not default.exists():
            return DEFAULT_CONFIG, "<built-in default>"
        path = default
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(path), None, f"cannot read config: {exc.strerror}")]) from exc
    return text, str(path)
