"""Cost of one HTTP handler per event over a Unix socket, against one no-op Python handler.

    python bench/bench_http_handler.py [--app node|python] [--events 2000] [--rounds 11]

Starts an example app of ``examples/`` (``/hooks/audit``: 204, no body) in a process of
its own, and two buses in this one: A with one no-op ``async def`` handler, B with one
``handlers.http`` endpoint on the app's socket. Domain events (no sink), round by round
alternating A and B: ``emit`` one event at a time (the latency a caller sees) and
``emit_many`` in batches of 100 with ``handlers.concurrency`` 16 (the throughput).
Prints one JSON line per case: median µs per event of A and B over the rounds, and the
median of the paired differences (what the HTTP handler adds per event).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bridge import Bus, Context, Event, parse_config
from bridge.handlers import HandlerRegistry
from bridge.results import EmitResult

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BATCH = 100


def start_app(app: str, socket: Path) -> subprocess.Popen[str]:
    if app == "node":
        node = shutil.which("node")
        if node is None:
            sys.exit("node is not installed: use --app python")
        argv = [node, str(EXAMPLES / "http-handler-node" / "app.js")]
    else:
        argv = [sys.executable, str(EXAMPLES / "http-handler-python" / "app.py")]
    proc = subprocess.Popen([*argv, str(socket)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    if not ready or not proc.stdout.readline().startswith("listening on"):
        proc.kill()
        sys.exit(f"the {app} app did not start")
    return proc


def make_bus(http: list[dict[str, Any]]) -> Bus:
    raw = {"handlers": {"entry_points": False, "concurrency": 16, "http": http}}
    return Bus(parse_config(raw, {}), registry=HandlerRegistry())


async def noop(event: Event, ctx: Context) -> None:
    return None


def check(results: list[EmitResult]) -> None:
    # A failed run is far cheaper than a call: one would make the numbers meaningless.
    for result in results:
        if result.handlers[0].outcome != "ok":
            sys.exit(f"a handler run failed, the numbers would be wrong: {result.handlers[0]}")


async def one_at_a_time(bus: Bus, events: int) -> float:
    results = []
    start = time.perf_counter()
    for _ in range(events):
        results.append(await bus.emit(Event(type="bench.x", kind="domain")))
    elapsed = time.perf_counter() - start
    check(results)
    return elapsed / events * 1e6


async def batched(bus: Bus, events: int) -> float:
    results = []
    start = time.perf_counter()
    for _ in range(events // BATCH):
        batch = [Event(type="bench.x", kind="domain") for _ in range(BATCH)]
        results.extend(await bus.emit_many(batch))
    elapsed = time.perf_counter() - start
    check(results)
    return elapsed / len(results) * 1e6


async def run(socket: Path, events: int, rounds: int) -> list[dict[str, object]]:
    python_bus = make_bus([])
    python_bus.subscribe("bench.x", noop, name="noop")
    http_bus = make_bus([{"name": "app", "socket": str(socket), "path": "/hooks/audit"}])
    rows = []
    async with python_bus, http_bus:
        cases: list[tuple[str, Callable[[Bus, int], Awaitable[float]]]] = [
            ("emit", one_at_a_time),
            ("emit_many", batched),
        ]
        for case, measure in cases:
            await measure(python_bus, BATCH)  # warm-up: connections, caches
            await measure(http_bus, BATCH)
            a: list[float] = []
            b: list[float] = []
            for _ in range(rounds):
                a.append(await measure(python_bus, events))
                b.append(await measure(http_bus, events))
            rows.append(
                {
                    "case": case,
                    "python_us": round(statistics.median(a), 2),
                    "http_us": round(statistics.median(b), 2),
                    "added_us": round(
                        statistics.median(y - x for x, y in zip(a, b, strict=True)), 2
                    ),
                    "rounds": rounds,
                    "events": events,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", choices=("node", "python"), default="node")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    gc.set_threshold(20_000, *gc.get_threshold()[1:])  # what `evbridge serve` sets
    directory = Path(tempfile.mkdtemp(prefix="bh", dir="/tmp"))
    socket = directory / "app.sock"
    proc = start_app(args.app, socket)
    try:
        runner = uvloop.run if uvloop is not None else asyncio.run
        for row in runner(run(socket, args.events, args.rounds)):
            print(json.dumps({"app": args.app, **row}))
    finally:
        proc.terminate()
        proc.wait(5)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
