"""One exception family: every error the dashboard raises on purpose is a DashboardError, grouped
by cause, and answered to HTTP clients from its own status and code."""

import inspect

from dashboard import errors
from dashboard.relay import errors as relay_errors
from dashboard.web import errors as web_errors


def test_every_error_class_is_a_dashboard_error_with_a_docstring():
    classes = [
        cls
        for module in (errors, relay_errors)
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, Exception) and cls.__module__ == module.__name__
    ]
    assert len(classes) > 20, classes
    for cls in classes:
        assert issubclass(cls, errors.DashboardError), f"{cls.__name__} is outside the family"
        assert cls.__doc__ and cls.__doc__ == cls.__doc__.strip(), f"{cls.__name__}: no one-line docstring"
    assert web_errors.HTTPError is errors.HTTPError


def test_each_cause_has_its_group():
    assert issubclass(errors.HTTPError, errors.RequestError)
    assert issubclass(errors.UnknownTopic, errors.RequestError)
    assert issubclass(errors.BrokerUnavailable, errors.BrokerError)
    assert issubclass(errors.BrokerConfigError, errors.SetupError)
    assert issubclass(errors.ConfigError, errors.SetupError)
    assert issubclass(relay_errors.IdleTimeout, relay_errors.RelayTimeout)


def test_an_unknown_topic_is_answered_with_its_own_status_and_code(serve):
    server = serve("topics:\n  t: {feed: metrics}\n")
    with server.client() as client:
        response = client.get("/sse/nope")
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "unknown_topic"


def test_nesting_is_measured_the_same_whether_or_not_a_body_has_more_openings_than_the_bound():
    """Bodies with no more `[` and `{` than the bound pass at once; the others are measured."""
    assert web_errors.json_nesting_problem(b"[" * 64 + b"]" * 64) is None
    assert web_errors.json_nesting_problem(b'{"a":' * 65 + b"1" + b"}" * 65) == (
        "arrays and objects are nested deeper than 64 levels"
    )
    assert web_errors.json_nesting_problem(b'["' + b"[{" * 100 + b'", [1]]') is None, "brackets in strings"
    assert web_errors.json_nesting_problem(b"[" * 65) is not None, "unclosed brackets count too"
