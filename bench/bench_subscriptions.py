"""Publisher throughput with no subscriber vs one stalled subscriber, in one run.

    python bench/bench_subscriptions.py [--events 20000] [--rounds 7] [--gc-threshold N]

The stalled subscriber never reads, so its queue stays full and every event
costs it a drop (``drop_oldest``). Target: ≥ 0.9x the no-subscriber rate.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time

from bench_bus import make_bus

from bridge import Bus, Event

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]


async def rate(bus: Bus, events: list[Event]) -> float:
    start = time.perf_counter()
    for i in range(0, len(events), 1000):
        await bus.emit_many(events[i : i + 1000])
    return len(events) / (time.perf_counter() - start)


async def run(n_events: int, rounds: int) -> dict[str, object]:
    events = [Event(type="bench.event", data={"i": i}, source="bench") for i in range(n_events)]
    none: list[float] = []
    stalled: list[float] = []
    async with make_bus(1) as bus:
        for _ in range(rounds):
            none.append(await rate(bus, events))
            async with bus.subscription("bench.*", max_queue=1000) as sub:
                stalled.append(await rate(bus, events))
                dropped = sub.dropped
    return {
        "events": n_events,
        "no_subscriber_eps": round(statistics.median(none)),
        "stalled_subscriber_eps": round(statistics.median(stalled)),
        "ratio": round(statistics.median(stalled) / statistics.median(none), 3),
        "dropped_by_stalled_subscriber_last_round": dropped,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--gc-threshold", type=int, default=None, help="as in bench_bus.py")
    args = parser.parse_args()
    if args.gc_threshold is not None:
        gc.set_threshold(args.gc_threshold, *gc.get_threshold()[1:])
    runner = uvloop.run if uvloop is not None else asyncio.run
    print(json.dumps(runner(run(args.events, args.rounds))))


if __name__ == "__main__":
    main()
