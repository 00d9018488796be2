"""Boards: how `panels:` and `dashboards:` become the boards of panels the pages show."""

from __future__ import annotations

from dashboard.config import Config, DashboardConfig, PanelConfig

DEFAULT_BOARD = "main"  # the board's name when the config has `panels:` and no `dashboards:`


def boards(config: Config) -> dict[str, DashboardConfig]:
    """Every board by name, panels filled in; without `dashboards:`, one board named `main`
    made of `panels:` (one panel per topic when there is none)."""
    if config.dashboards:
        return {
            name: board.model_copy(update={"panels": effective_panels(config, board.panels)})
            for name, board in config.dashboards.items()
        }
    return {DEFAULT_BOARD: DashboardConfig(panels=effective_panels(config))}


def effective_panels(config: Config, panels: list[PanelConfig] | None = None) -> list[PanelConfig]:
    """Panels with defaults filled in: `panels:` when none are given, one per topic without it."""
    if panels is None:
        panels = config.panels if config.panels is not None else [PanelConfig(topic=t) for t in config.topics]
    return [
        panel.model_copy(
            update={
                "title": panel.title or config.topics[panel.topic].title or panel.topic,
                "view": panel.view or config.topics[panel.topic].feed_class.default_view,
            }
        )
        for panel in panels
    ]
