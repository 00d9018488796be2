"""The page keeps up with fast feeds: 12 panels (chart, stat, log, list) at 50 events/s each, in
headless Chromium, measured with CDP Performance.getMetrics (the same measurement as bench.page)."""

from __future__ import annotations

from bench.page import config, measure


def test_twelve_panels_at_fifty_events_a_second_keep_the_main_thread_mostly_idle(serve, open_page):
    server = serve(config(50))
    opened = open_page(server.url)
    result = measure(opened.page, seconds=6, warmup=6)
    shown = {k: round(v, 3) for k, v in result.items()}
    # The target is a quarter of the main thread (bench.page: 23% CPU, median of 3, on a loaded
    # machine); the speed itself is measured there, not here. These bounds only catch the page that
    # changed the DOM at every event (95% busy), with room for a machine running the rest of the
    # suite beside the browser (0.39 seen then): CPU time of the main thread, and its task time,
    # which also counts waits for a core.
    assert result["cpu"] <= 0.6, shown
    assert result["busy"] <= 0.8, shown
    # flat: logs and lists at their caps, nothing piling up
    assert abs(result["nodes_after"] - result["nodes_before"]) <= 0.1 * result["nodes_before"], shown
    panels = opened.page.locator(".panel")
    assert panels.count() == 12
    assert opened.page.locator('.panel[data-view="log"]').first.locator(".log-line").count() == 200
    assert not opened.console_errors, opened.console_errors
