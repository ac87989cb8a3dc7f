"""`Bus.emit_many` with 3 no-op handlers, two checkouts alternated in one run (A B A B).

    python bench/ab_emit_many.py A_DIR B_DIR [--runs 4] [--rounds 5]

Each run is a fresh process importing `bridge` from its checkout: 20 batches of 1 000
events per round, `evbridge serve`'s GC threshold, events/s by process CPU time (which
other load on the machine disturbs less than wall time). Prints each run's median
and, per side, the median of the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = """
import gc, json, statistics, sys, time
sys.path.insert(0, sys.argv[2])
import uvloop
from bench_bus import make_bus
from bridge import Event

async def main(rounds):
    gc.set_threshold(20_000, 10, 10)
    events = [Event(type="bench.event", data={"i": i}, source="bench") for i in range(20_000)]
    rates = []
    async with make_bus(3) as bus:
        await bus.emit_many(events[:1000])
        for _ in range(rounds):
            start = time.process_time()
            for i in range(0, len(events), 1000):
                await bus.emit_many(events[i : i + 1000])
            rates.append(len(events) / (time.process_time() - start))
    print(json.dumps(statistics.median(rates)))

uvloop.run(main(int(sys.argv[1])))
"""


def run(checkout: Path, rounds: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    bench = str(checkout / "bench")
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(rounds), bench],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=checkout,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    samples: dict[str, list[float]] = {"A": [], "B": []}
    for _ in range(args.runs):
        for side, path in (("A", args.a), ("B", args.b)):
            rate = run(path.resolve(), args.rounds)
            samples[side].append(rate)
            print(f"{side} {rate / 1000:.1f}k/s", flush=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(
        json.dumps(
            {
                "A_eps": round(med["A"]),
                "B_eps": round(med["B"]),
                "B_vs_A": round(med["B"] / med["A"], 3),
                "load": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
