"""The project's one exception family: catch exactly the cause you mean."""

from __future__ import annotations

from dataclasses import dataclass


class DashboardError(Exception):
    """Base class of every error the dashboard raises on purpose."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file, with where it is."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


class ConfigError(DashboardError):
    """The configuration cannot be used; `issues` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class FeedNotFound(DashboardError):
    """A feed type named in the configuration is not installed."""


class UnknownTopic(DashboardError):
    """A request named a topic that is not configured."""


class BrokerUnavailable(DashboardError):
    """The broker cannot store or deliver events right now."""


class LeadershipLost(DashboardError):
    """Another instance now leads this topic's feed: the event was not stored."""
