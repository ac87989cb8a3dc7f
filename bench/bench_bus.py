"""Micro-benchmark: `Bus.emit` / `Bus.emit_many` vs a minimal reference bus, in one run.

    python bench/bench_bus.py [--events 50000] [--rounds 5] [--gc-threshold N]

Both buses run the same no-op async handlers on the same loop. evbridge also
routes every event and publishes it to the ``memory`` sink, and records
handler outcomes, durations and metrics; the reference does nothing but await
each handler inside try/except. Prints a JSON line per configuration with the
median events/s over ``--rounds`` and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

from bridge import Bus, Context, Depends, Event, parse_config
from bridge.handlers import HandlerRegistry

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]


class ReferenceBus:
    """The 15-line baseline: await each handler for the type inside try/except."""

    def __init__(self) -> None:
        self.handlers: dict[str, list[Callable[[Event, object], Awaitable[None]]]] = {}

    def subscribe(self, type_: str, fn: Callable[[Event, object], Awaitable[None]]) -> None:
        self.handlers.setdefault(type_, []).append(fn)

    async def emit(self, event: Event) -> None:
        for handler in self.handlers.get(event.type, ()):
            try:
                await handler(event, None)
            except Exception as exc:
                print("handler failed:", exc, file=sys.stderr)


async def noop(event: Event, ctx: Context | object) -> None:
    return None


def settings() -> dict[str, str]:
    return {"dsn": "bench"}


async def injected(event: Event, config: dict[str, str] = Depends(settings)) -> None:
    return None


def make_bus(n_handlers: int, handler: Callable[..., Awaitable[None]] = noop) -> Bus:
    config = parse_config(
        {
            "sinks": [{"name": "mem", "type": "memory", "max_events": 1000}],
            "routes": [{"match": "*", "sink": "mem"}],
            # The benchmark loops never yield to the event loop on purpose; the
            # loop-lag watchdog would (rightly) report that as a stall.
            "handlers": {"entry_points": False, "loop_warn_s": 0},
        },
        env={},
    )
    bus = Bus(config, registry=HandlerRegistry())
    for i in range(n_handlers):
        bus.subscribe("bench.event", handler, name=f"handler{i}")
    return bus


async def rate(fn: Callable[[], Awaitable[None]], n: int) -> float:
    start = time.perf_counter()
    await fn()
    return n / (time.perf_counter() - start)


async def run(n_events: int, rounds: int) -> list[dict[str, object]]:
    events = [Event(type="bench.event", data={"i": i}, source="bench") for i in range(n_events)]
    rows: list[dict[str, object]] = []
    for n_handlers in (0, 1, 3):
        ref = ReferenceBus()
        for _ in range(n_handlers):
            ref.subscribe("bench.event", noop)
        async with make_bus(n_handlers) as bus:

            async def ref_loop(ref: ReferenceBus = ref) -> None:
                for e in events:
                    await ref.emit(e)

            async def bus_loop(bus: Bus = bus) -> None:
                for e in events:
                    await bus.emit(e)

            async def bus_many(bus: Bus = bus) -> None:
                # Batches of 1 000, the size of a typical batch POST.
                for start in range(0, len(events), 1000):
                    await bus.emit_many(events[start : start + 1000])

            samples: dict[str, list[float]] = {"reference": [], "emit": [], "emit_many": []}
            for _ in range(rounds):
                # Interleaved so that machine noise hits all three alike.
                samples["reference"].append(await rate(ref_loop, n_events))
                samples["emit"].append(await rate(bus_loop, n_events))
                samples["emit_many"].append(await rate(bus_many, n_events))
        med = {k: statistics.median(v) for k, v in samples.items()}
        rows.append(
            {
                "handlers": n_handlers,
                "reference_eps": round(med["reference"]),
                "emit_eps": round(med["emit"]),
                "emit_many_eps": round(med["emit_many"]),
                "emit_vs_reference": round(med["emit"] / med["reference"], 3),
            }
        )
    return rows


async def run_injected(n_events: int, rounds: int) -> dict[str, object]:
    """One handler with one injected dependency against one plain ``(event, ctx)`` handler,
    alternating round by round."""
    events = [Event(type="bench.event", data={"i": i}, source="bench") for i in range(n_events)]
    async with make_bus(1) as plain, make_bus(1, injected) as with_dep:
        samples: dict[str, list[float]] = {"plain": [], "injected": []}
        for _ in range(rounds):
            for label, bus in (("plain", plain), ("injected", with_dep)):

                async def loop(bus: Bus = bus) -> None:
                    for e in events:
                        await bus.emit(e)

                samples[label].append(await rate(loop, n_events))
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "handlers": "1 with one Depends",
        "plain_emit_eps": round(med["plain"]),
        "injected_emit_eps": round(med["injected"]),
        "injected_vs_plain": round(med["injected"] / med["plain"], 3),
        "dependency_cost_us": round((1 / med["injected"] - 1 / med["plain"]) * 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--gc-threshold",
        type=int,
        default=None,
        help="first-generation GC threshold (`evbridge serve` uses bridge.server.run.GC_THRESHOLD)",
    )
    args = parser.parse_args()
    if args.gc_threshold is not None:
        gc.set_threshold(args.gc_threshold, *gc.get_threshold()[1:])
    runner = uvloop.run if uvloop is not None else asyncio.run
    for row in runner(run(args.events, args.rounds)):
        print(json.dumps(row))
    print(json.dumps(runner(run_injected(args.events, args.rounds))))


if __name__ == "__main__":
    main()
