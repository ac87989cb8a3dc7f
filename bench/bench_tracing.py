"""What tracing costs per event: off against a base revision, and on at 1 % sampling.

    python bench/bench_tracing.py [--base HEAD~2] [--pairs 4] [--events 20000] [--rounds 5]

Off: ``git archive`` puts ``--base``'s ``bridge/`` in a temporary directory, and the
same ``Bus.emit`` loop (one no-op ``async def`` handler, ``memory`` sink) runs in a fresh
process per sample, alternating base and this tree (A B A B ... ``--pairs`` times).
Prints the median events/s of each and their ratio.

On: in one process, rounds alternate between tracing off and on (ratio 0.01 through
the SDK's parent-based sampler, spans handed to a batch processor whose exporter drops
them: the bridge's cost, not the collector's). Prints the cost per event in µs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LOOP = """
import asyncio, gc, json, statistics, sys, time
from bridge import Bus, Event, parse_config
from bridge.handlers import HandlerRegistry

async def noop(event, ctx):
    return None

async def main(n, rounds):
    config = parse_config({
        "sinks": [{"name": "mem", "type": "memory", "max_events": 1000}],
        "routes": [{"name": "all", "match": "*", "sink": "mem"}],
        "handlers": {"entry_points": False, "loop_warn_s": 0},
    }, {})
    bus = Bus(config, registry=HandlerRegistry())
    bus.subscribe("bench.event", noop, name="h")
    events = [Event(type="bench.event", data={"i": i}, source="bench") for i in range(n)]
    rates = []
    async with bus:
        for _ in range(rounds):
            start = time.perf_counter()
            for e in events:
                await bus.emit(e)
            rates.append(n / (time.perf_counter() - start))
    print(json.dumps(statistics.median(rates)))

gc.set_threshold(20000)
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


def extract_base(rev: str) -> Path:
    archive = subprocess.run(
        ["git", "archive", rev, "bridge"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    where = Path(tempfile.mkdtemp(prefix="bench-base-"))
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(where, filter="data")
    return where


def sample(path: Path, events: int, rounds: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(path)}
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", LOOP, str(events), str(rounds)],
        env=env,
        cwd=tempfile.gettempdir(),
        check=True,
        capture_output=True,
        text=True,
    )
    return float(json.loads(done.stdout))


def off_vs_base(base: str, pairs: int, events: int, rounds: int) -> dict[str, object]:
    where = extract_base(base)
    rates: dict[str, list[float]] = {"base": [], "this": []}
    trees = {"base": where, "this": ROOT}
    for i in range(pairs):
        # A B, then B A: a load trend on the machine hits both alike.
        for label in ("base", "this") if i % 2 == 0 else ("this", "base"):
            rates[label].append(sample(trees[label], events, rounds))
    med = {k: statistics.median(v) for k, v in rates.items()}
    paired = [t / b for t, b in zip(rates["this"], rates["base"], strict=True)]
    return {
        "case": f"tracing off, emit, 1 handler: this vs {base}",
        "base_eps": [round(r) for r in rates["base"]],
        "this_eps": [round(r) for r in rates["this"]],
        "ratio_of_medians": round(med["this"] / med["base"], 3),
        "median_paired_ratio": round(statistics.median(paired), 3),
    }


async def on_vs_off(events: int, rounds: int, ratio: float) -> dict[str, object]:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from bridge import Bus, Context, Event, parse_config, tracing
    from bridge.config import TracingConfig
    from bridge.handlers import HandlerRegistry

    class Drop(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    async def noop(event: Event, ctx: Context) -> None:
        return None

    config = parse_config(
        {
            "sinks": [{"name": "mem", "type": "memory", "max_events": 1000}],
            "routes": [{"name": "all", "match": "*", "sink": "mem"}],
            "handlers": {"entry_points": False, "loop_warn_s": 0},
        },
        {},
    )
    bus = Bus(config, registry=HandlerRegistry())
    bus.subscribe("bench.event", noop, name="h")
    batch = [Event(type="bench.event", data={"i": i}, source="bench") for i in range(events)]
    rates: dict[str, list[float]] = {"off": [], "on": []}
    async with bus:
        for _ in range(rounds):
            for label in ("off", "on"):
                if label == "on":
                    tracing.setup(
                        TracingConfig(enabled=True, sampler_ratio=ratio),
                        {},
                        processor=BatchSpanProcessor(Drop()),
                    )
                start = time.perf_counter()
                for e in batch:
                    await bus.emit(e)
                rates[label].append(events / (time.perf_counter() - start))
                tracing.shutdown()
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "case": f"tracing on at sampler_ratio {ratio} vs off, emit, 1 handler",
        "off_eps": round(med["off"]),
        "on_eps": round(med["on"]),
        "on_vs_off": round(med["on"] / med["off"], 3),
        "cost_per_event_us": round((1 / med["on"] - 1 / med["off"]) * 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", default="HEAD~2")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import gc

    gc.set_threshold(20_000)
    print(json.dumps(off_vs_base(args.base, args.pairs, args.events, args.rounds)))
    for ratio in (0.01, 1.0):
        print(json.dumps(asyncio.run(on_vs_off(args.events, args.rounds, ratio))))


if __name__ == "__main__":
    main()
