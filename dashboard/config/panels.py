"""The options each built-in view takes (a panel's `options:`), so that a misspelt one is an error
at its line rather than a setting the page ignores. Views that packages install check their own."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field

from dashboard.config.schema import Strict


class Thresholds(Strict):
    """Where a field's warning and critical levels start."""

    warn: float | None = Field(None, description="the value where warning starts")
    crit: float | None = Field(None, description="the value where critical starts")
    below: bool = Field(False, description="true when low values are bad")


class FieldOptions(Strict):
    """How one field is shown on a chart or stat panel."""

    label: str | None = Field(None, description="the name shown (default: the field's)")
    unit: str | None = Field(None, description="B, B/s, %, ms, s, USD or any text")
    thresholds: Thresholds | None = None


def _names_as_mapping(value: Any) -> Any:
    """A list of field names is checked as a mapping of the names to no options."""
    if isinstance(value, list) and all(isinstance(name, str) for name in value):
        return dict.fromkeys(value)
    return value


#: a list of field names, or per field its label, unit and thresholds
Fields = Annotated[dict[str, FieldOptions | None], BeforeValidator(_names_as_mapping)]


class ChartOptions(Strict):
    fields: Fields | None = Field(None, description="default: every numeric field seen, up to 8")
    window: float | None = Field(None, gt=0, description="seconds shown (default 300)")
    unit: str | None = Field(None, description="of the fields that name none")
    min: float | None = Field(None, description="fixes the bottom of the y axis")
    max: float | None = Field(None, description="fixes the top of the y axis")
    event: str | None = Field(None, description="the event type read (default: message)")


class StatOptions(Strict):
    field: str | None = Field(None, description="default: the first numeric field")
    fields: Fields | None = Field(None, description="as the chart's; the first is shown")
    unit: str | None = None
    decimals: int | None = Field(None, ge=0, le=12)
    warn: float | None = None
    crit: float | None = None
    below: bool = Field(False, description="true when low values are bad")
    points: int | None = Field(None, ge=1, le=10_000, description="sparkline length (default 60)")
    event: str | None = None


class ListOptions(Strict):
    max: int | None = Field(None, ge=1, le=10_000, description="items kept (default 50)")


class LogOptions(Strict):
    max: int | None = Field(None, ge=1, le=100_000, description="lines kept (default 500)")
    status: bool | None = Field(None, description="false: leave feed status events out")


class TableOptions(Strict):
    rows: str | None = Field(None, description="the dotted path to the part shown")
    columns: Fields | None = Field(None, description="default: every key, up to 12")
    event: str | None = None


class NoOptions(Strict):
    """A view that takes no options."""


#: the built-in views' options, by view
VIEW_OPTIONS: dict[str, type[BaseModel]] = {
    "chart": ChartOptions,
    "stat": StatOptions,
    "list": ListOptions,
    "log": LogOptions,
    "table": TableOptions,
    "chat": NoOptions,
    "json": NoOptions,
    "alerts": NoOptions,
}
