"""System metrics from psutil: CPU, memory, swap, load, disk, network and processes as flat numbers.

Each event's data is one flat JSON object; every key ends in its unit (`_percent`, `_bytes`,
`_bytes_per_s`, `_per_s`) except the load averages and the process count. Rates come from the
change of psutil's cumulative counters between two samples, divided by the time between them.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Literal

import psutil
from pydantic import Field

from dashboard import Event, Feed

Group = Literal["cpu", "per_cpu", "memory", "swap", "load", "disk", "disk_io", "net", "processes"]
ALL_GROUPS: tuple[Group, ...] = (
    "cpu",
    "per_cpu",
    "memory",
    "swap",
    "load",
    "disk",
    "disk_io",
    "net",
    "processes",
)


def busy_percent(before: Any, after: Any) -> float:
    """CPU busy % between two `psutil.cpu_times()` samples (guest time is already in user time)."""

    def split(t: Any) -> tuple[float, float]:
        fields = t._asdict()
        total = sum(fields.values()) - fields.get("guest", 0.0) - fields.get("guest_nice", 0.0)
        idle = fields.get("idle", 0.0) + fields.get("iowait", 0.0)
        return total, idle

    total_a, idle_a = split(before)
    total_b, idle_b = split(after)
    elapsed = total_b - total_a
    if elapsed <= 0:
        return 0.0
    return round(min(100.0, max(0.0, 100.0 * (1 - (idle_b - idle_a) / elapsed))), 1)


def per_second(before: float, after: float, seconds: float) -> float:
    """A counter's rate; 0 when it went backwards (a reset or a device that went away)."""
    return round(max(0.0, after - before) / seconds, 1) if seconds > 0 else 0.0


class Metrics(Feed):
    """CPU, memory, swap, load, disk and network rates of this machine (psutil)."""

    default_view = "chart"

    class Options(Feed.Options):
        interval: float = Field(2.0, ge=0.1, description="seconds between samples")
        groups: list[Group] = Field(
            default_factory=lambda: list(ALL_GROUPS),
            description="which groups of numbers to send: " + ", ".join(ALL_GROUPS),
        )
        disk_path: str = Field("/", description="the filesystem whose usage the `disk` group reports")

    def counters(self) -> dict[str, Any]:
        """The cumulative counters that rates and CPU % are computed from."""
        groups = set(self.options.groups)
        out: dict[str, Any] = {"at": time.monotonic()}
        if "cpu" in groups:
            out["cpu"] = psutil.cpu_times()
        if "per_cpu" in groups:
            out["per_cpu"] = psutil.cpu_times(percpu=True)
        if "disk_io" in groups:
            out["disk_io"] = psutil.disk_io_counters()
        if "net" in groups:
            out["net"] = psutil.net_io_counters()
        return out

    def sample(self, before: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        """One flat sample, and the counters to compute the next one from (runs in a thread)."""
        groups = set(self.options.groups)
        now = self.counters()
        seconds = now["at"] - before["at"]
        data: dict[str, float] = {}
        if "cpu" in groups:
            data["cpu_percent"] = busy_percent(before["cpu"], now["cpu"])
        if "per_cpu" in groups:
            for i, (a, b) in enumerate(zip(before["per_cpu"], now["per_cpu"], strict=False)):
                data[f"cpu{i}_percent"] = busy_percent(a, b)
        if "memory" in groups:
            mem = psutil.virtual_memory()
            data["memory_percent"] = mem.percent
            data["memory_used_bytes"] = mem.total - mem.available
            data["memory_available_bytes"] = mem.available
            data["memory_total_bytes"] = mem.total
        if "swap" in groups:
            swap = psutil.swap_memory()
            data["swap_percent"] = swap.percent
            data["swap_used_bytes"] = swap.used
            data["swap_total_bytes"] = swap.total
        if "load" in groups and hasattr(os, "getloadavg"):
            data["load_1m"], data["load_5m"], data["load_15m"] = (round(x, 2) for x in os.getloadavg())
        if "disk" in groups:
            disk = psutil.disk_usage(self.options.disk_path)
            data["disk_percent"] = disk.percent
            data["disk_used_bytes"] = disk.used
            data["disk_free_bytes"] = disk.free
            data["disk_total_bytes"] = disk.total
        if "disk_io" in groups and before["disk_io"] is not None and now["disk_io"] is not None:
            a, b = before["disk_io"], now["disk_io"]
            data["disk_read_bytes_per_s"] = per_second(a.read_bytes, b.read_bytes, seconds)
            data["disk_write_bytes_per_s"] = per_second(a.write_bytes, b.write_bytes, seconds)
            data["disk_reads_per_s"] = per_second(a.read_count, b.read_count, seconds)
            data["disk_writes_per_s"] = per_second(a.write_count, b.write_count, seconds)
        if "net" in groups:
            a, b = before["net"], now["net"]
            data["net_recv_bytes_per_s"] = per_second(a.bytes_recv, b.bytes_recv, seconds)
            data["net_sent_bytes_per_s"] = per_second(a.bytes_sent, b.bytes_sent, seconds)
            data["net_recv_packets_per_s"] = per_second(a.packets_recv, b.packets_recv, seconds)
            data["net_sent_packets_per_s"] = per_second(a.packets_sent, b.packets_sent, seconds)
        if "processes" in groups:
            data["processes"] = len(psutil.pids())
        return data, now

    async def stream(self):
        counters = await asyncio.to_thread(self.counters)
        while True:
            await asyncio.sleep(self.options.interval)
            data, counters = await asyncio.to_thread(self.sample, counters)
            yield Event(data=data)
