"""The relay's errors, grouped by cause; each knows the HTTP status and OpenAI error it becomes, and
says in `summary` what failed and whether to retry, in words for a person using the dashboard."""

from __future__ import annotations

from dashboard.errors import DashboardError


class RelayError(DashboardError):
    """Base class: a completion could not be relayed (or was cut short)."""

    status = 502
    code = "upstream_error"
    type = "server_error"
    summary = "The AI provider failed to answer. Try again in a moment."
    # Set where a provider's failure is classified (failures.mark), read when choosing what to do next:
    retry = False  # another attempt at the same provider may succeed
    fallback = False  # the next provider may succeed
    retry_after: float | None = None  # seconds the provider asked to wait before retrying

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class NoProvider(RelayError):
    """No configured provider serves the requested model."""

    status = 404
    code = "model_not_found"
    type = "invalid_request_error"
    summary = "No AI provider serves this model. Retrying will not help: ask the dashboard's operator."


class Untranslatable(RelayError):
    """A request parameter has no faithful equivalent in the dialect of a provider that serves the
    model: the request is refused rather than sent without it."""

    status = 400
    code = "unsupported_parameter"
    type = "invalid_request_error"
    summary = "The request uses a parameter this AI provider cannot take. Retrying will not help."

    def __init__(self, param: str, why: str) -> None:
        super().__init__(f"{param!r} {why}")
        self.param = param
        self.why = why


# -- timeouts --------------------------------------------------------------------------------
class RelayTimeout(RelayError):
    """One of the four timeouts expired; `which` names it."""

    status = 504
    type = "timeout"
    which = ""
    summary = "The AI provider took too long to answer. Try again."

    @property
    def code(self) -> str:  # type: ignore[override]
        return f"{self.which}_timeout"


class ConnectTimeout(RelayTimeout):
    """The connection to the provider was not open in time."""

    which = "connect"


class FirstTokenTimeout(RelayTimeout):
    """The provider sent no event in time after the request."""

    which = "first_token"


class IdleTimeout(RelayTimeout):
    """The provider went quiet between two events for too long."""

    which = "idle"


class TotalTimeout(RelayTimeout):
    """The completion as a whole took too long."""

    which = "total"


# -- the provider failed -------------------------------------------------------------------------
class UpstreamUnreachable(RelayError):
    """The provider could not be connected to."""

    code = "upstream_unreachable"
    summary = "The AI provider cannot be reached. Try again later."


class UpstreamStatus(RelayError):
    """The provider answered with an error status (its message is passed on, keys redacted)."""

    def __init__(self, status: int, message: str, *, code: str | None = None, **kwargs) -> None:
        super().__init__(message, **kwargs)
        if status == 429:
            self.status, self.code, self.type = 429, code or "rate_limited", "rate_limit_error"
            self.summary = "The AI provider is busy (rate limited). Try again in a minute."
        elif 400 <= status < 500 and status not in (401, 403):
            # The request itself was refused (bad parameters, unknown model): the client's to fix.
            self.status, self.code, self.type = status, code or "upstream_rejected", "invalid_request_error"
            self.summary = "The AI provider refused the request. Retrying will not help."
        else:
            # 5xx, or 401/403: the provider or the relay's own credentials, never the client's.
            self.status, self.code, self.type = 502, code or "upstream_error", "server_error"


class UpstreamProtocolError(RelayError):
    """The provider's answer is not a well-formed OpenAI response or event stream."""

    code = "upstream_protocol_error"
    summary = "The AI provider sent an answer the dashboard cannot read. Try again later."


class UpstreamIncomplete(RelayError):
    """The provider's stream broke off before the answer was complete."""

    code = "upstream_incomplete"
    summary = "The answer broke off before it was complete. Try again."


class UpstreamStreamError(RelayError):
    """The provider sent an error object in the middle of a stream."""

    code = "upstream_stream_error"
    summary = "The AI provider stopped with an error before the answer was complete. Try again."
