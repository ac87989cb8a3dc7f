"""Spool benchmark: events/s into the durable spool, and drained out of it.

    python bench/bench_spool.py [--events 200000] [--rounds 5] [--dir DIR]

Measures, on one event loop (uvloop when installed), with the real codec and
files fsync'd on the disk under ``--dir`` (default: a temporary directory):

- ``append_batch``: routed events (`Outgoing`, ~110-byte JSON data) encoded
  and appended in batches of 1 000 by one producer, each batch fsync'd before
  the next: what `Bus.emit_many` does in durable mode;
- ``append_batch_x8``: the same from 8 concurrent producers (group commit:
  concurrent batches share fsyncs);
- ``append_single_x256``: single-event appends from 256 concurrent producers
  (each waits for its own fsync; group commit is what makes this fast);
- ``drain_memory``: the deliverer reading everything back, decoding it,
  publishing to the ``memory`` sink and acknowledging it.

Prints one JSON line per measurement per round and then the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bridge.config import RetryConfig, RouteConfig
from bridge.deliverer import Deliverer
from bridge.delivery import Publisher
from bridge.event import Event
from bridge.metrics import METRICS
from bridge.sinks.base import Outgoing
from bridge.sinks.memory import MemoryConfig, MemoryRoute, MemorySink
from bridge.spool import codec
from bridge.spool.store import Spool

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]

BATCH = 1000


def make_items(n: int) -> list[Outgoing]:
    route = MemoryRoute(topic="bench")
    return [
        Outgoing(
            Event(
                type="bench.event",
                source="bench",
                key=f"user-{i % 1000}",
                data={"user": i % 1000, "email": "a@example.com", "plan": "pro", "seq": i},
            ),
            "all",
            route,
            f"user-{i % 1000}",
        )
        for i in range(n)
    ]


async def append_batches(spool: Spool, items: list[Outgoing], producers: int) -> None:
    chunks = [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
    queue = iter(chunks)

    async def producer() -> None:
        for chunk in queue:
            payloads = [codec.encode("mem", item) for item in chunk]
            await spool.append(["mem"] * len(payloads), payloads)

    await asyncio.gather(*(producer() for _ in range(producers)))


async def append_single(spool: Spool, items: list[Outgoing], producers: int) -> None:
    queue = iter(items)

    async def producer() -> None:
        for item in queue:
            await spool.append(["mem"], [codec.encode("mem", item)])

    await asyncio.gather(*(producer() for _ in range(producers)))


async def drain(spool: Spool) -> None:
    sink = MemorySink(MemoryConfig(name="mem", type="memory", max_events=1))
    await sink.start()
    deliverer = Deliverer(
        spool,
        {"mem": Publisher(sink, coalesce=False)},
        {"mem": MemoryRoute},
        [RouteConfig(name="all", match="*", sink="mem", options=MemoryRoute(topic="bench"))],
        RetryConfig(),
        rng=random.Random(1),
    )
    deliverer.start()
    assert await deliverer.drain(600)
    await deliverer.stop()


CPU: dict[str, float] = {}


async def timed(fn: Callable[[], Awaitable[None]], name: str = "") -> float:
    """Wall seconds for ``fn``; its CPU seconds (all threads) go to ``CPU[name]``."""
    start, cpu = time.perf_counter(), time.process_time()
    await fn()
    CPU[name] = time.process_time() - cpu
    return time.perf_counter() - start


def commits() -> float:
    return METRICS.registry.get_sample_value("evbridge_spool_commit_records_count") or 0.0


async def one_round(base: Path, n: int, single_n: int) -> dict[str, tuple[float, float, float]]:
    items = make_items(n)
    out: dict[str, tuple[float, float, float]] = {}
    cases: list[tuple[str, int, Callable[[Spool], Awaitable[None]]]] = [
        ("append_batch", n, lambda s: append_batches(s, items, 1)),
        ("append_batch_x8", n, lambda s: append_batches(s, items, 8)),
        ("append_single_x256", single_n, lambda s: append_single(s, items[:single_n], 256)),
    ]
    for name, count, run in cases:
        directory = base / name
        async with Spool(directory, head=codec.head, sink_prefix=codec.sink_prefix) as spool:
            before = commits()
            seconds = await timed(lambda run=run, spool=spool: run(spool), name)  # type: ignore[misc]
            fsyncs = commits() - before
            if name == "append_batch":
                drained = await timed(lambda spool=spool: drain(spool), "drain")  # type: ignore[misc]
                out["drain_memory"] = (count / drained, 0.0, CPU["drain"] / count * 1e6)
        shutil.rmtree(directory)
        out[name] = (count / seconds, count / max(fsyncs, 1), CPU[name] / count * 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--single", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    if uvloop is not None:
        uvloop.install()
    base = Path(tempfile.mkdtemp(prefix="bench-spool-", dir=args.dir))
    rows: dict[str, list[tuple[float, float, float]]] = {}
    try:
        for round_no in range(args.rounds):
            for name, (rate, per_fsync, cpu_us) in asyncio.run(
                one_round(base, args.events, args.single)
            ).items():
                rows.setdefault(name, []).append((rate, per_fsync, cpu_us))
                print(
                    json.dumps(
                        {
                            "round": round_no,
                            "case": name,
                            "events_per_s": round(rate),
                            "events_per_fsync": round(per_fsync, 1),
                            "cpu_us_per_event": round(cpu_us, 2),
                        }
                    ),
                    flush=True,
                )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("\ncase                  median events/s   events per fsync   CPU us/event")
    for name, values in rows.items():
        rate = statistics.median(v[0] for v in values)
        per = statistics.median(v[1] for v in values)
        cpu = statistics.median(v[2] for v in values)
        print(f"{name:<22}{rate:>16,.0f}{per:>19,.1f}{cpu:>15.2f}")


if __name__ == "__main__":
    main()
