"""The performance table's ratios (issue 16) from short runs, for a reviewer to re-run.

    python bench/bench_quick.py [--rounds 3] [--duration 2]     (make bench-quick)

Within about two minutes, on this machine's loopback and in one process:

- HTTP rows (`bench_http.py`'s servers and load generator, rounds alternating which
  server goes first): batch NDJSON → memory sink, the server's CPU µs per event
  beside the minimal decode-only server's; single-event POSTs over the Unix socket at
  32 connections, evbridge/minimal req/s; p99 latency at 1 000 events/s over the Unix
  socket, evbridge/minimal. Each ratio is taken within a round, then the median.
- `Bus.emit_many` with 3 no-op handlers (batches of 1 000, `evbridge serve`'s GC
  threshold), events/s, median of rounds.

Left out (they need a Kafka-protocol broker and take minutes): the Kafka batch row
(`bench_kafka.py`) and the durable drain row (`bench_durable.py`).
It prints figures and asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_http
import uvloop
from bench_bus import make_bus

from bridge import Event

PHASES = ("single_unix", "batch_unix", "latency_unix")


def http_rounds(rounds: int, duration: float) -> list[dict[str, dict[str, dict[str, Any]]]]:
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    out = []
    with tempfile.TemporaryDirectory(prefix="ebq-", dir="/tmp") as tmp_dir:
        for round_no in range(rounds):
            order = ("evbridge", "minimal") if round_no % 2 == 0 else ("minimal", "evbridge")
            results: dict[str, dict[str, dict[str, Any]]] = {}
            for name in order:
                server = bench_http.start_server(name, Path(tmp_dir), server_cpu)
                try:
                    results[name] = bench_http.measure(server, duration, client_cpu, PHASES)
                finally:
                    server.stop()
            out.append(results)
    return out


async def emit_many_rate(rounds: int, n_events: int = 20_000) -> list[float]:
    gc.set_threshold(20_000, 10, 10)
    events = [Event(type="bench.event", data={"i": i}, source="bench") for i in range(n_events)]
    rates = []
    async with make_bus(3) as bus:
        await bus.emit_many(events[:1000])  # warm up
        for _ in range(rounds):
            start = time.perf_counter()
            for i in range(0, n_events, 1000):
                await bus.emit_many(events[i : i + 1000])
            rates.append(n_events / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per HTTP phase")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    started = time.monotonic()
    http = http_rounds(args.rounds, min(args.duration, 10.0))

    def med(fn: Any) -> float:
        return statistics.median(fn(r) for r in http)

    batch_ev = med(lambda r: r["evbridge"]["batch_unix"]["cpu_us_per_event"])
    batch_min = med(lambda r: r["minimal"]["batch_unix"]["cpu_us_per_event"])
    single = med(lambda r: r["evbridge"]["single_unix"]["rps"] / r["minimal"]["single_unix"]["rps"])
    p99 = med(
        lambda r: r["evbridge"]["latency_unix"]["p99_ms"] / r["minimal"]["latency_unix"]["p99_ms"]
    )
    p99_ev = med(lambda r: r["evbridge"]["latency_unix"]["p99_ms"])
    p99_min = med(lambda r: r["minimal"]["latency_unix"]["p99_ms"])
    rates = uvloop.run(emit_many_rate(max(args.rounds, 5)))
    rows = [
        (
            "batch NDJSON → memory sink, server CPU per event",
            f"{batch_ev:.2f} µs (minimal {batch_min:.2f} µs)",
            "≤ 5 µs",
        ),
        ("single-event POST, Unix socket, 32 conns, vs minimal", f"{single:.2f}×", "≥ 0.75×"),
        (
            "p99 at 1 000 events/s, Unix socket, vs minimal",
            f"{p99:.2f}× ({p99_ev:.2f} ms vs {p99_min:.2f} ms)",
            "≤ 1.2×",
        ),
        (
            "Bus.emit_many, 3 no-op handlers",
            f"{statistics.median(rates) / 1000:.0f}k events/s",
            "≥ 250k",
        ),
        ("batch NDJSON → Kafka vs aiokafka send() loop", "not measured here", "≥ 3×"),
        ("durable: spooled events drained to Kafka", "not measured here", "≥ 100k events/s"),
    ]
    print()
    print(
        f"{args.rounds} HTTP rounds of {args.duration:g} s per phase; 1-minute load average "
        f"{load:.1f} before, {os.getloadavg()[0]:.1f} after; {time.monotonic() - started:.0f} s"
    )
    print("| path | now | target |\n| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("Kafka and durable rows: python bench/bench_kafka.py, python bench/bench_durable.py")


if __name__ == "__main__":
    main()
