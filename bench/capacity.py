"""What a run of many streams needs of this machine, checked before it starts: open files for each
process (the server's and the load clients'), local ports (each loopback source address 127.0.0.x
has the whole ephemeral port range to itself) and the system-wide settings. The bench raises its
own processes' limits; a system setting that falls short is said, with the command that raises it,
never changed behind the user's back.
"""

from __future__ import annotations

import math
import resource
import socket
from dataclasses import dataclass, field
from pathlib import Path

RESERVE = 200  # files a server needs besides its streams (sse-dashboard keeps 100 free of them)
CLIENT_RESERVE = 100  # ... and a load client besides its connections
PORTS_USED = 0.8  # of a source address's ephemeral ports, the share a run may take
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux 4.2+


def sysctl(name: str) -> list[int] | None:
    """A numeric kernel setting (`net.ipv4.ip_local_port_range`), or None where there is none."""
    path = Path("/proc/sys") / name.replace(".", "/")
    try:
        return [int(x) for x in path.read_text().split()]
    except (OSError, ValueError):
        return None


def raise_own_files_limit(wanted: int) -> int:
    """This process's open files limit raised to `wanted` (both soft and hard: root with
    CAP_SYS_RESOURCE may raise the hard one), else to its hard limit; the limit it now has.
    The processes it starts inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            pass
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def ports_per_source() -> int:
    low, high = sysctl("net.ipv4.ip_local_port_range") or [32768, 60999]
    return high - low + 1


def source_addresses(streams: int) -> list[str]:
    """Loopback addresses for the clients to spread `streams` connections over, one per
    (ephemeral port range x PORTS_USED) of them."""
    count = max(1, math.ceil(streams / (ports_per_source() * PORTS_USED)))
    if count > 254:
        raise ValueError(f"{streams} connections need {count} source addresses; 127.0.0.1-254 is the most")
    return [f"127.0.0.{n}" for n in range(1, count + 1)]


def client_processes(streams: int, at_least: int) -> int:
    """Load-client processes for `streams` connections: each holds what its open files allow."""
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(at_least, math.ceil(streams / max(1, files - CLIENT_RESERVE)))


def bound_socket(source: str) -> socket.socket:
    """A non-blocking TCP socket bound to `source`, its port picked at connect time (so that ports
    are shared between destinations rather than each bind taking one for good)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((source, 0))
    sock.setblocking(False)
    return sock


@dataclass
class Plan:
    """How a run of `wanted` streams goes on this machine: how many it can hold (`streams`), and
    what was checked or falls short (`notes`, each line to print)."""

    wanted: int
    streams: int
    notes: list[str] = field(default_factory=list)

    @property
    def short(self) -> bool:
        return self.streams < self.wanted


def plan(wanted: int) -> Plan:
    """Raise this process's open files limit for `wanted` streams and check the machine for them."""
    files = raise_own_files_limit(wanted + RESERVE)
    streams = min(wanted, files - RESERVE)
    if streams < wanted:
        streams = max(1000, streams // 1000 * 1000)
    result = Plan(wanted, streams)
    note = result.notes.append
    if result.short:
        note(
            f"SHORT: one server process needs {wanted + RESERVE} open files for {wanted} streams; a process "
            f"here may have {files} (its hard limit, raised only with CAP_SYS_RESOURCE, which this process "
            "lacks: "
            f"`ulimit -Hn {wanted + RESERVE}` as root before the run, or docker's --ulimit "
            f"nofile={wanted + RESERVE}). Measuring {streams} streams instead."
        )
    nr_open = (sysctl("fs.nr_open") or [0])[0]
    if nr_open and nr_open < wanted + RESERVE:
        note(
            f"SHORT: fs.nr_open (the most any process's limit can be) is {nr_open}: "
            f"sysctl -w fs.nr_open={wanted + RESERVE}"
        )
    file_max = (sysctl("fs.file-max") or [0])[0]
    if file_max and file_max < 2 * streams + 10000:
        note(
            f"SHORT: fs.file-max is {file_max}, both ends of {streams} connections need {2 * streams}: "
            f"sysctl -w fs.file-max={4 * streams}"
        )
    conntrack = (sysctl("net.netfilter.nf_conntrack_max") or [0])[0]
    if conntrack and conntrack < 2 * streams:
        note(
            f"SHORT: net.netfilter.nf_conntrack_max is {conntrack} (if loopback is tracked, connections "
            f"past it are dropped): sysctl -w net.netfilter.nf_conntrack_max={4 * streams}"
        )
    sources = source_addresses(streams)
    somaxconn = (sysctl("net.core.somaxconn") or [0])[0]
    note(
        f"{streams} streams: open files per process {files}; client processes: one per "
        f"{files - CLIENT_RESERVE} streams at least, over {len(sources)} source address(es) "
        f"127.0.0.1-{len(sources)} x {ports_per_source()} ports; fs.nr_open {nr_open}, fs.file-max "
        f"{file_max}, net.core.somaxconn {somaxconn} (clients connect a few hundred at a time, so the "
        "listen backlog does not fill)"
    )
    return result
