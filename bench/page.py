"""The dashboard page under fast feeds: main-thread busy time and DOM size in headless Chromium.

python -m bench.page [--rate 50] [--seconds 10] [--rounds 3]

Serves 12 panels (3 each of chart, stat, log and list), each on its own topic fed at `--rate`
events/s, opens the page in Debian's Chromium and reads CDP `Performance.getMetrics` over a window:
busy = main-thread task time / wall time, cpu = main-thread CPU time / wall time (lower than busy
when other processes hold the cores while a task runs: say how loaded the machine was). The test
suite runs the same measurement (tests/test_page_speed.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import ROOT, free_port, machine

CHROMIUM = "/usr/bin/chromium"
VIEWS = ("chart", "stat", "log", "list")


def config(rate: float) -> str:
    feed = f"{{feed: 'bench.feeds:Wave', options: {{rate_hz: {rate}}}}}"
    topics = "\n".join(f"  t{i}: {feed}" for i in range(12))
    options = {"chart": "{fields: [value]}", "stat": "{field: value}", "log": "{max: 200}"}
    options["list"] = "{max: 50}"
    panels = "\n".join(
        f"  - {{topic: t{i}, view: {VIEWS[i % 4]}, options: {options[VIEWS[i % 4]]}}}" for i in range(12)
    )
    return f"server: {{retry_ms: 500}}\ntopics:\n{topics}\npanels:\n{panels}\n"


def measure(page, seconds: float, warmup: float = 5.0) -> dict[str, float]:
    """Main-thread busy share, its layout share and the DOM node count over `seconds` of a page
    that is live, after `warmup` seconds (logs and lists fill up to their caps meanwhile)."""
    page.wait_for_selector('#connection[data-state="live"]')
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable", {"timeDomain": "timeTicks"})
    time.sleep(warmup)  # on purpose: let the panels reach their steady state

    def metrics() -> dict[str, float]:
        cdp.send("HeapProfiler.collectGarbage")  # nodes left for the collector are not the page's
        return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}

    before = metrics()
    time.sleep(seconds)  # on purpose: the measurement window
    after = metrics()
    wall = after["Timestamp"] - before["Timestamp"]
    task = after["TaskDuration"] - before["TaskDuration"]
    layout = (after["LayoutDuration"] - before["LayoutDuration"]) + (
        after["RecalcStyleDuration"] - before["RecalcStyleDuration"]
    )
    return {
        "busy": task / wall,
        # the main thread's own CPU time: on a loaded machine tasks also wait for a core
        "cpu": (after["ThreadTime"] - before["ThreadTime"]) / wall,
        "layout_share": layout / task if task else 0.0,
        "script_share": (after["ScriptDuration"] - before["ScriptDuration"]) / task if task else 0.0,
        "nodes_before": before["Nodes"],
        "nodes_after": after["Nodes"],
    }


def run(rate: float, seconds: float, rounds: int) -> list[dict[str, float]]:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(config(rate))
        port = free_port()
        cmd = [sys.executable, "-m", "dashboard", "serve", "--config", str(path), "--port", str(port)]
        server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(2)
            results = []
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
                for _ in range(rounds):
                    context = browser.new_context(viewport={"width": 1280, "height": 900})
                    page = context.new_page()
                    page.goto(f"http://127.0.0.1:{port}/")
                    results.append(measure(page, seconds))
                    context.close()
                browser.close()
            return results
        finally:
            server.terminate()
            server.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="events/s per panel")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = run(args.rate, args.seconds, args.rounds)
    busy = [r["busy"] * 100 for r in results]
    cpu = [r["cpu"] * 100 for r in results]
    print(f"Machine: {machine()}, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"12 panels x {args.rate:g} events/s, {args.rounds} rounds of {args.seconds:g} s")
    print(
        f"main thread busy: median {statistics.median(busy):.1f}% "
        f"(min {min(busy):.1f}%, max {max(busy):.1f}%)"
    )
    print(
        f"main thread CPU:  median {statistics.median(cpu):.1f}% (min {min(cpu):.1f}%, max {max(cpu):.1f}%)"
    )
    for r in results:
        print(
            f"  busy {r['busy'] * 100:.1f}%, cpu {r['cpu'] * 100:.1f}%, "
            f"layout+style {r['layout_share'] * 100:.0f}% of it, script {r['script_share'] * 100:.0f}%, "
            f"DOM nodes {r['nodes_before']:.0f} -> {r['nodes_after']:.0f}"
        )


if __name__ == "__main__":
    main()
