"""The relay's own work in instructions: a figure that a rerun on another day reproduces.

    python -m bench.instructions [--chunks 50] [--baseline CHECKOUT]

CPU time on a shared machine moves by tens of percent from run to run (bench.relay reports medians
and spreads for that reason), which hides a change of a few percent. Instructions executed do not
move: each target runs under valgrind's callgrind, which counts the instructions its process
executes in user space (not the kernel's work for its system calls, nor waiting), with other work on
the machine too; not under a load that takes a core from it for minutes (a test suite beside it
moved the count per chunk by 5%: the relay, run fifty times slower, then reads more chunks together,
and reads of several events take the dialect's longer check). The same streams as bench.relay's, one
at a time, from its upstream: each target is run twice, serving a few streams and then many more,
and the difference, divided by the streams between, is its cost per stream with start-up taken out.
Streams of one chunk give the cost of a request; streams of `--chunks` chunks, less that, the cost
of a chunk.

Targets: the relay (`dashboard serve`, as bench.relay configures it), the python-pipe (bench.relay's
floor: a bare uvloop TCP pipe), and with `--baseline` another checkout's relay, for an A/B. Then, per
request only, uvicorn alone: a bare ASGI app under uvicorn reading the same request and answering
one token chunk, the part of a request's cost that is the server's, not the relay's.
Needs valgrind (Debian: `apt-get install valgrind`). Takes a few minutes: under callgrind a
process runs some fifty times slower, and two targets run at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.relay import (
    OURS,
    PIPE,
    ROOT,
    machine,
    one_stream,
    relay_config,
    start_bare_asgi,
    start_pipe,
    start_relay,
    start_upstream,
)

FEW, MANY = 10, 60  # streams served in the two runs of each target
BARE = "uvicorn-alone"  # a bare ASGI app under uvicorn answering the request: uvicorn's own share
GAP_MS = 2  # the upstream's gap between chunks


def counted(tmp: Path, target: str, checkout: Path, up_port: int, streams: int, chunks: int) -> int:
    """Instructions the target's process executed, from its start to its end, having served
    `streams` streams of `chunks` chunks, one after another."""
    run = tmp / f"{target.replace('@', '-')}-{streams}x{chunks}"
    run.mkdir()
    out = run / "callgrind.out"
    wrap = ("valgrind", "--quiet", "--tool=callgrind", f"--callgrind-out-file={out}")
    if target == PIPE:
        proc, port = start_pipe(run, up_port, wrap)
    elif target == BARE:
        proc, port = start_bare_asgi(run, wrap)
    else:
        proc, port = start_relay(run, relay_config(up_port, up_port), checkout, "relay", wrap)
    try:

        async def serve() -> None:
            for _ in range(streams):
                await one_stream(port, "/v1/chat/completions", chunks, GAP_MS, to_end=True)

        asyncio.run(serve())
    finally:
        proc.send_signal(signal.SIGINT)  # both end cleanly on it; callgrind writes its count then
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    match = re.search(r"^summary: (\d+)", out.read_text(), re.MULTILINE) if out.exists() else None
    if match is None:
        raise RuntimeError(f"{target}: callgrind wrote no count (valgrind's exit code {proc.returncode})")
    return int(match.group(1))


def per_stream(tmp: Path, target: str, checkout: Path, up_port: int, chunks: int) -> float:
    """The target's instructions per stream of `chunks` chunks, start-up taken out."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        few, many = pool.map(lambda n: counted(tmp, target, checkout, up_port, n, chunks), (FEW, MANY))
    return (many - few) / (MANY - FEW)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--chunks", type=int, default=50, help="chunks per stream (default 50, as bench.relay's)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. `git worktree add` of an earlier commit), counted beside this one "
        "as sse-dashboard@baseline",
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("bench.instructions needs valgrind (Debian: apt-get install valgrind)", file=sys.stderr)
        return 1
    os.environ["PYTHONHASHSEED"] = "0"  # dicts and sets lay out the same way in every run
    targets = {OURS: ROOT, PIPE: ROOT}
    if args.baseline is not None:
        targets[f"{OURS}@baseline"] = args.baseline.resolve()
    figures: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        upstream, up_port = start_upstream(tmp)
        try:
            for target, checkout in targets.items():
                request = per_stream(tmp, target, checkout, up_port, 1)
                stream = per_stream(tmp, target, checkout, up_port, args.chunks)
                figures[target] = (request, (stream - request) / (args.chunks - 1))
                print(f"{target}: counted", file=sys.stderr)
            bare = per_stream(tmp, BARE, ROOT, up_port, 1)
        finally:
            upstream.terminate()
            upstream.wait(10)
    info = machine()
    pipe_request, pipe_chunk = figures[PIPE]
    lines = [
        f"Machine: {info['nproc']} CPUs, {info['cpu']}, Python {info['python']}; instructions in user space,"
        f" counted by callgrind (the kernel's work for system calls is not in them); streams of 1 and of"
        f" {args.chunks} chunks, {MANY - FEW} streams counted per figure:",
        "",
        "| target | per request | per chunk | per stream of "
        f"{args.chunks} chunks | request / pipe's | chunk / pipe's | stream / pipe's |",
        "|---|---|---|---|---|---|---|",
    ]
    for target, (request, chunk) in figures.items():
        stream = request + (args.chunks - 1) * chunk
        pipe_stream = pipe_request + (args.chunks - 1) * pipe_chunk
        lines.append(
            f"| {target} | {request:,.0f} | {chunk:,.0f} | {stream:,.0f} | {request / pipe_request:.1f}x"
            f" | {chunk / pipe_chunk:.1f}x | {stream / pipe_stream:.1f}x |"
        )
    ours = figures[OURS][0]
    lines += [
        "",
        f"{BARE} (uvicorn serving a bare ASGI app that reads the same request and answers one token"
        f" chunk): {bare:,.0f} instructions per request, {bare / ours:.0%} of {OURS}'s.",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
