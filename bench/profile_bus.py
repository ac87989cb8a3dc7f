"""Profile of `Bus.emit_many` with 3 no-op handlers (pyinstrument, or cProfile).

    python bench/profile_bus.py [--out bench/profile-emit-many.txt] [--batches 200]

``--out`` ending in .html: pyinstrument's HTML page; .txt: its text tree; else cProfile.

Batches of 1 000 events, as in `bench_bus.py`, with the collector threshold
`evbridge serve` sets; prints the rate and the profile's top lines.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvloop
from bench_bus import make_bus

from bridge import Event


async def main(args: argparse.Namespace) -> None:
    gc.set_threshold(20_000, 10, 10)
    events = [Event(type="bench.event", data={"i": i}, source="bench") for i in range(1000)]
    async with make_bus(3) as bus:
        for _ in range(20):
            await bus.emit_many(events)
        start = time.perf_counter()
        if args.out.endswith((".html", ".txt")):
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0002, async_mode="disabled")
            profiler.start()
            for _ in range(args.batches):
                await bus.emit_many(events)
            profiler.stop()
            elapsed = time.perf_counter() - start
            text = profiler.output_text(unicode=True, color=False)
            report = profiler.output_html() if args.out.endswith(".html") else text
            Path(args.out).write_text(report)  # noqa: ASYNC240 - after timing
            print(text[:6000])
        else:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.batches):
                await bus.emit_many(events)
            prof.disable()
            elapsed = time.perf_counter() - start
            prof.dump_stats(args.out)
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    print(
        f"emit_many, 3 handlers, under the profiler: {args.batches * 1000 / elapsed:,.0f} events/s"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench/profile-emit-many.txt")
    parser.add_argument("--batches", type=int, default=200)
    uvloop.run(main(parser.parse_args()))
