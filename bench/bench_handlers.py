"""Per-handler-run cost of the pipeline, this tree against a base revision, in one process.

    python bench/bench_handlers.py [--base main] [--calls 20000] [--rounds 41]

Loads ``bridge/pipeline.py`` as it is at ``--base`` (``git show``) next to this tree's,
and times ``run_handlers`` of both alternately, round by round, on the same event with
one no-op ``async def (event, ctx)`` handler; then this tree's cost for other handler
shapes (``(event)``, one ``Depends``). Prints a JSON line per case: the median µs per
call and, for the base comparison, the median of the paired differences.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from bridge import Context, Depends, Event
from bridge import pipeline as current
from bridge.handlers import Handler
from bridge.threads import HandlerThreads


def load_base(rev: str) -> ModuleType:
    source = subprocess.run(
        ["git", "show", f"{rev}:bridge/pipeline.py"], check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "base_pipeline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("base_pipeline", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def classic(event: Event, ctx: Context) -> None:
    return None


async def one_arg(event: Event) -> None:
    return None


def settings() -> dict[str, str]:
    return {"dsn": "bench"}


async def injected(event: Event, config: dict[str, str] = Depends(settings)) -> None:
    return None


async def timed(run: Callable[[], Awaitable[Any]], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        await run()
    return (time.perf_counter() - start) / calls * 1e6


async def main(base_rev: str, calls: int, rounds: int) -> list[dict[str, object]]:
    base = load_base(base_rev)
    event = Event(type="bench.event", data={"i": 1}, source="bench")
    threads = HandlerThreads(1)
    task = asyncio.current_task()
    assert task is not None
    slot = current.Slot(task)

    def runner(module: ModuleType, fn: Callable[..., Any]) -> Callable[[], Awaitable[Any]]:
        handlers = (Handler(fn, "bench.event", name=fn.__name__),)

        def run() -> Awaitable[Any]:
            ctx = Context(event, 0, max_depth=8)
            return module.run_handlers(handlers, event, ctx, slot, 5.0, threads, 1.0)  # type: ignore[no-any-return]

        return run

    cases = {
        "base (event, ctx)": runner(base, classic),
        "this (event, ctx)": runner(current, classic),
        "this (event)": runner(current, one_arg),
        "this one Depends": runner(current, injected),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    order = list(cases.items())
    for i in range(rounds):
        # Alternating, and rotated each round, so that machine noise and position hit all alike.
        for name, run in order[i % len(order) :] + order[: i % len(order)]:
            samples[name].append(await timed(run, calls))
    rows: list[dict[str, object]] = []
    base_us = samples["base (event, ctx)"]
    for name, values in samples.items():
        row: dict[str, object] = {"case": name, "us_per_call": round(statistics.median(values), 3)}
        if name != "base (event, ctx)":
            diffs = [v - b for v, b in zip(values, base_us, strict=True)]
            row["vs_base_us"] = round(statistics.median(diffs), 3)
        rows.append(row)
    threads.close()
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="main")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=41)
    args = parser.parse_args()
    sys.setrecursionlimit(10_000)
    for row in asyncio.run(main(args.base, args.calls, args.rounds)):
        print(json.dumps(row))
