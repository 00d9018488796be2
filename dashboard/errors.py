"""The project's one exception family, grouped by cause as httpx's is: catch exactly what you mean.

    DashboardError
    ├── SetupError              the configuration or the installation cannot be used
    │   ├── ConfigError         (every problem of a config file, with file:line)
    │   ├── FeedNotFound
    │   ├── BrokerConfigError
    │   └── StorageError        (the broker's file cannot be used: damaged, unwritable, in use)
    ├── RequestError            a client's request cannot be served as asked
    │   ├── HTTPError           (any status, raised by routes)
    │   ├── UnknownTopic
    │   └── InvalidEvent        (also a ValueError: an event no reader could be sent)
    ├── BrokerError             the broker could not do what was asked
    │   ├── BrokerUnavailable
    │   └── LeadershipLost
    └── RelayError              the AI relay failed (dashboard.relay.errors: timeouts, upstream)

Every error knows what an HTTP client is answered when one reaches it: `status`, `code` and
`headers`, as JSON `{"error": {"code", "message"}}` (dashboard/web/errors.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from difflib import get_close_matches


class DashboardError(Exception):
    """Base class of every error the dashboard raises on purpose."""

    status: int = 500
    code: str = "internal_error"
    headers: dict[str, str] | None = None


# -- setup -----------------------------------------------------------------------------------------
class SetupError(DashboardError):
    """The configuration or the installation cannot be used: the server does not start."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file, with where it is."""

    file: str
    line: int | None
    message: str
    column: int | None = None
    excerpt: str = ""  # the line at fault, and a caret under the column: shown under the message

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"

    def shown(self) -> str:
        """The issue as `dashboard check` prints it: the message, then `--> file:line:column` (the
        form editors jump to) over the line at fault with a caret under the column."""
        if not (self.line and self.column):
            return str(self)
        excerpt = "".join(f"\n      {line}" for line in self.excerpt.splitlines())
        return f"{self}\n    --> {self.file}:{self.line}:{self.column}{excerpt}"


class ConfigError(SetupError):
    """The configuration cannot be used; `issues` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class FeedNotFound(SetupError):
    """A feed type named in the configuration is not installed."""


class BrokerConfigError(SetupError):
    """The broker URL names no installed backend."""


class StorageError(SetupError):
    """The broker's database file cannot be used (damaged, not writable, or in use by another
    process); the message names the file and what to do."""


# -- requests --------------------------------------------------------------------------------------
class RequestError(DashboardError):
    """A client's request cannot be served as asked; it is answered with `status`."""

    status = 400
    code = "bad_request"


HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
}


class HTTPError(RequestError):
    """An error a route answers with any `status` (and `code`, `headers`)."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or HTTP_CODES.get(status, "error")
        self.message = message
        self.headers = headers


class UnknownTopic(RequestError):
    """A request named a topic that is not configured."""

    status = 404
    code = "unknown_topic"


class InvalidEvent(RequestError, ValueError):
    """An event that cannot be stored, since not every reader could be sent it (data that is not
    JSON or not UTF-8, a bad type or id); the message names the part at fault."""

    status = 422
    code = "invalid_event"


# -- the broker ------------------------------------------------------------------------------------
class BrokerError(DashboardError):
    """The broker could not do what was asked."""

    status = 503
    code = "broker_unavailable"
    headers = {"Retry-After": "1"}


class BrokerUnavailable(BrokerError):
    """The broker cannot store or deliver events right now."""


class LeadershipLost(BrokerError):
    """Another instance now leads this topic's feed: the event was not stored."""

    status = 409
    code = "leadership_lost"
    headers = None


def did_you_mean(word: object, choices: Iterable[object]) -> str:
    """ " (did you mean 'x'?)" when one of `choices` is close to `word` (" ('x' or 'y'?)" when two
    are equally close), else "". Swapped letters count as the smallest slip: 'chrat' is 'chart'."""
    word, names = str(word), [str(c) for c in choices]
    scored = sorted((typo_distance(word, name), name) for name in names)
    best = [name for distance, name in scored if distance == scored[0][0] <= max(1, len(word) / 3)]
    if not best:
        best = get_close_matches(word, names, n=1, cutoff=0.6)
    if not best:
        return ""
    return f" (did you mean {' or '.join(repr(name) for name in best[:2])}?)"


def typo_distance(a: str, b: str) -> float:
    """Edits from `a` to `b`: a letter added, dropped or changed counts 1, two letters swapped 0.5
    (optimal string alignment distance, with the swap weighted as the commonest slip)."""
    before: list[float] = []
    earlier: list[float] = []
    row: list[float] = [float(j) for j in range(len(b) + 1)]
    for i in range(1, len(a) + 1):
        before, row = row, [float(i)] + [0.0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(before[j] + 1, row[j - 1] + 1, before[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1] and a[i - 1] != b[j - 1]:
                row[j] = min(row[j], earlier[j - 2] + 0.5)
        earlier = before
    return row[-1]
