"""Soak benchmark: sustained mixed load on a durable bridge, RSS sampled over time.

    python bench/soak.py [--duration 600] [--rate 1000] [--interval 5] [--bootstrap HOST:PORT]
                         [--rabbitmq-url URL] [--out bench] [--plot bench/soak.png]

What runs (everything on this machine, loopback only):

- Tansu (started here unless ``--bootstrap`` names a Kafka-protocol broker) and the local
  RabbitMQ; a unique Kafka topic per route and a unique durable exchange + queue.
- ``evbridge serve`` as a subprocess on a Unix socket, ``delivery.mode: durable``, with
  three handlers (an inline one on every event, an async one on RabbitMQ events, a sync
  one run in the thread pool on domain events) and four kinds of event:
  ``soak.kafka`` (durable → Kafka), ``soak.rabbit`` (durable → RabbitMQ), ``soak.sync``
  (a route with ``delivery: sync`` → a second Kafka topic) and ``soak.domain``
  (handlers only), mixed 4:3:2:1 by sequence number, with data of 0–511 padding bytes.
- A separate load-generator process (uvloop, raw HTTP/1.1 over the Unix socket,
  keep-alive pool of ``--connections``) sends open-loop at ``--rate`` events/s: half
  of the events as single-event POSTs, half in NDJSON batches of ``--batch-size``.
  It records every event acknowledged to it (a 200/202 single, or a batch item whose
  status is ``spooled``, ``published`` or ``handled``).
- Meanwhile this process samples the server every ``--interval`` seconds (VmRSS,
  VmHWM, threads, open fds from /proc; spool backlog and published counts from
  /metrics) and consumes both Kafka topics and the queue.

Phases: idle (RSS once startup has settled, before any request), load (``--duration``
seconds), drain (until the spool is empty and every acknowledged event was consumed;
duplicates are counted, not failed).

Invariants (`check`): no 5xx and no 4xx other than 429; every acknowledged event reached
its destination; idle RSS ≤ 60 MB; peak RSS (VmHWM at the end of the load, so nothing
between samples is missed) ≤ 150 MB; RSS growth ≤ 5 % (see `rss_growth`); the load
generator kept up with at least half of the target rate. Exit status 1 if any fails.
Results go to ``<out>/soak-<stamp>.json`` and ``.csv``, the plot to ``--plot``;
``--replot JSON`` redraws the plot from a recorded result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_durable  # noqa: E402  (Tansu start/stop)
import bench_http  # noqa: E402  (request framing, free ports)

MB = 1024 * 1024
START_TIMEOUT = 30.0
#: Idle RSS is read once this many consecutive samples (0.25 s apart) agree within 1 %.
SETTLE_SAMPLES = 8
SETTLE_TIMEOUT = 20.0
#: Whatever the duration, the load generator stops after this many events.
MAX_EVENTS = 5_000_000
ACKED = frozenset({"spooled", "published", "handled"})
#: Sequence number modulo 10 → event type: 4 Kafka, 3 RabbitMQ, 2 sync Kafka, 1 domain.
KINDS = ("kafka",) * 4 + ("rabbit",) * 3 + ("sync",) * 2 + ("domain",)
DESTINATIONS = ("kafka", "rabbit", "sync")


@dataclass(frozen=True)
class Targets:
    """The issue's targets (issue 8, "Memory and soak")."""

    idle_rss_mb: float = 60.0
    peak_rss_mb: float = 150.0
    growth: float = 0.05
    #: Events accepted per second must reach this share of ``--rate``: a soak that sent
    #: little proves little.
    min_rate_share: float = 0.5


@dataclass(frozen=True)
class SoakOptions:
    duration: float = 600.0
    rate: float = 1000.0
    interval: float = 5.0
    batch_size: int = 50
    batch_share: float = 0.5
    connections: int = 32
    bootstrap: str | None = None
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    #: Start of the growth window, as a share of the load phase (the issue's "last 8
    #: minutes" of 10 → 0.2).
    warmup_share: float = 0.2
    #: Events sent in batches, as fast as the server takes them, before the clock starts.
    warmup_events: int = 10_000
    drain_timeout: float = 180.0
    workdir: Path | None = None
    #: Pin the server and the load generator to separate CPUs (when there are two).
    pin: bool = False
    targets: Targets = field(default_factory=Targets)


# --------------------------------------------------------------------------- the analysis


def rss_growth(
    samples: Sequence[dict[str, Any]], duration: float, warmup_share: float
) -> dict[str, Any]:
    """Relative RSS growth over the load phase after warm-up, robust to noise.

    The window is the part of the load phase after ``warmup_share`` of it (for a 10-minute
    run and 0.2: the last 8 minutes). It is cut into quarters by time; growth is
    ``median(RSS in the last quarter) / median(RSS in the first quarter) - 1``.
    Medians rather than single samples so that one GC cycle or one large batch does not
    decide the result; quarters of the window rather than its first sample so that a 30 s
    run's warm-up (allocator arenas, pools, buffers reaching their working size) stays out.
    A steady leak of x %/minute still shows as about ``0.75 × window minutes × x %``.
    """
    start = duration * warmup_share
    window = [s for s in samples if start <= s["t"] <= duration]
    if len(window) < 8:
        return {"growth": None, "reason": f"only {len(window)} samples in the window"}
    span = duration - start
    first = [s["rss_mb"] for s in window if s["t"] < start + span / 4]
    last = [s["rss_mb"] for s in window if s["t"] >= duration - span / 4]
    if not first or not last:
        return {"growth": None, "reason": "a quarter of the window has no sample"}
    base, end = statistics.median(first), statistics.median(last)
    ts = [s["t"] for s in window]
    rss = [s["rss_mb"] for s in window]
    slope = statistics.linear_regression(ts, rss).slope * 60 if len(set(ts)) > 1 else 0.0
    return {
        "growth": round(end / base - 1, 4),
        "window_s": [round(start, 1), round(duration, 1)],
        "first_quarter_median_mb": round(base, 2),
        "last_quarter_median_mb": round(end, 2),
        "slope_mb_per_min": round(slope, 3),
    }


def check(result: dict[str, Any], targets: Targets | None = None) -> list[str]:
    """Every invariant the soak promises; returns one sentence per failure (empty: all held)."""
    t = targets or Targets()
    failures: list[str] = []
    load = result["load"]
    statuses = Counter({int(k): v for k, v in load["statuses"].items()})
    server_errors = sum(n for code, n in statuses.items() if code >= 500)
    if server_errors:
        failures.append(f"{server_errors} responses were 5xx: {dict(statuses)}")
    client_errors = sum(n for code, n in statuses.items() if 400 <= code < 500 and code != 429)
    if client_errors:
        failures.append(f"{client_errors} responses were 4xx (not 429): {dict(statuses)}")
    if load["connection_errors"]:
        failures.append(f"{load['connection_errors']} requests lost their connection")
    if load["unanswered"]:
        failures.append(f"{load['unanswered']} requests got no answer within 60 s")
    if load["item_errors"]:
        failures.append(f"{load['item_errors']} batch items were refused: {load['item_statuses']}")
    for name, dest in result["delivery"].items():
        if dest["missing"]:
            failures.append(
                f"{dest['missing']} of {dest['acked']} acknowledged {name} events never "
                f"arrived, e.g. {dest['missing_sample']}"
            )
    idle = result["idle"]["rss_mb"]
    if idle > t.idle_rss_mb:
        failures.append(f"idle RSS {idle:.1f} MB > {t.idle_rss_mb:g} MB")
    peak = result["summary"]["peak_rss_mb"]
    if peak > t.peak_rss_mb:
        failures.append(f"peak RSS {peak:.1f} MB > {t.peak_rss_mb:g} MB")
    growth = result["summary"]["growth"]
    if growth["growth"] is None:
        failures.append(f"RSS growth not measurable: {growth['reason']}")
    elif growth["growth"] > t.growth:
        failures.append(
            f"RSS grew {growth['growth']:.1%} over {growth['window_s']} s "
            f"({growth['first_quarter_median_mb']} → {growth['last_quarter_median_mb']} MB) "
            f"> {t.growth:.0%}"
        )
    rate = result["summary"]["accepted_per_s"]
    wanted = result["options"]["rate"] * t.min_rate_share
    if rate < wanted:
        failures.append(f"only {rate:.0f} events/s accepted, wanted ≥ {wanted:.0f}")
    return failures


# --------------------------------------------------------------------------- load generator


def make_event(run: str, seq: int) -> dict[str, Any]:
    kind = KINDS[seq % 10]
    event: dict[str, Any] = {
        "id": f"{run}-{seq}",
        "type": f"soak.{kind}",
        "source": "soak",
        "key": f"k{seq % 64}",
        "data": {"seq": seq, "user": seq % 9973, "pad": "x" * (seq * 37 % 512)},
    }
    if kind == "domain":
        event["kind"] = "domain"
    return event


def seq_of(event_id: str) -> int:
    return int(event_id.rpartition("-")[2])


class BodyConn(bench_http.Conn):
    """One keep-alive connection, one request in flight; answers (status, body)."""

    keep_body = True


class LoadStats:
    def __init__(self) -> None:
        self.sent = 0
        self.acked: list[int] = []
        self.statuses: Counter[int] = Counter()
        self.item_statuses: Counter[str] = Counter()
        self.item_errors = 0
        self.connection_errors = 0
        self.late = 0
        self.warmup_acked = 0
        self.unanswered = 0
        self.latency: dict[str, list[float]] = {"single": [], "batch": []}


async def run_load(spec: dict[str, Any]) -> LoadStats:
    """Open-loop mixed load for ``spec["duration"]`` seconds; progress as JSON lines."""
    import msgspec

    loop = asyncio.get_running_loop()
    unix, run, duration = spec["unix"], spec["run"], spec["duration"]
    rate, share, size = spec["rate"], spec["batch_share"], spec["batch_size"]
    single_rate, batch_rate = rate * (1 - share), rate * share / size
    if single_rate <= 0 or batch_rate <= 0:
        raise SystemExit("--batch-share must be between 0 and 1 (exclusive)")
    encode = msgspec.json.encode
    decode = msgspec.json.decode
    stats = LoadStats()
    idle: asyncio.Queue[BodyConn] = asyncio.Queue()
    for _ in range(spec["connections"]):
        _, conn = await loop.create_unix_connection(BodyConn, unix)
        idle.put_nowait(conn)
    seq = 0
    pending: set[asyncio.Task[None]] = set()

    async def request(path: str, events: list[dict[str, Any]], due: float) -> None:
        single = len(events) == 1 and path == "/v1/events"
        if single:
            body, ctype = encode(events[0]), "application/json"
        else:
            body = b"\n".join(encode(e) for e in events) + b"\n"
            ctype = "application/x-ndjson"
        if idle.empty():
            stats.late += 1
        conn = await idle.get()
        try:
            status, answer = await conn.send(bench_http._request(path, body, ctype))
        except ConnectionError:
            stats.connection_errors += 1
            _, conn = await loop.create_unix_connection(BodyConn, unix)
            idle.put_nowait(conn)
            return
        idle.put_nowait(conn)
        stats.latency["single" if single else "batch"].append(time.perf_counter() - due)
        stats.statuses[status] += 1
        if single:
            if status in (200, 202):
                stats.acked.append(seq_of(events[0]["id"]))
            return
        if status != 200:
            return
        for item in decode(answer)["results"]:
            stats.item_statuses[item["status"]] += 1
            if item["status"] in ACKED:
                stats.acked.append(seq_of(item["id"]))
            else:
                stats.item_errors += 1

    def launch(path: str, count: int, due: float) -> None:
        nonlocal seq
        events = [make_event(run, seq + i) for i in range(count)]
        seq += count
        stats.sent += count
        task = loop.create_task(request(path, events, due))
        pending.add(task)
        task.add_done_callback(pending.discard)

    # Warm-up, outside the clock: bounded caches reach their working size first (the
    # spool's in-memory tail alone holds up to 6 144 records, ~10 MB here).
    while seq < spec["warmup_events"]:
        launch("/v1/events/batch", size, time.perf_counter())
    if pending:
        await asyncio.wait(pending, timeout=60)
    stats.late = 0
    stats.latency = {"single": [], "batch": []}
    stats.warmup_acked = len(stats.acked)
    print(
        json.dumps({"started": True, "warmup_events": seq, "acked": len(stats.acked)}), flush=True
    )

    t0 = time.perf_counter()
    singles = batches = 0
    next_report = 1.0
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed >= duration or seq >= MAX_EVENTS:
            break
        # Request k of a kind is due at k / rate: send everything due by now, interleaving
        # so neither kind starves the other.
        while singles * 1.0 <= elapsed * single_rate or batches * 1.0 <= elapsed * batch_rate:
            if singles * 1.0 <= elapsed * single_rate:
                launch("/v1/events", 1, t0 + singles / single_rate)
                singles += 1
            if batches * 1.0 <= elapsed * batch_rate:
                launch("/v1/events/batch", size, t0 + batches / batch_rate)
                batches += 1
        if elapsed >= next_report:
            next_report += 1.0
            print(json.dumps(progress(stats, elapsed, len(pending))), flush=True)
        await asyncio.sleep(0.005)
    if pending:
        await asyncio.wait(pending, timeout=60)
    stats.unanswered = len(pending)
    while not idle.empty():
        transport = idle.get_nowait().transport
        if transport is not None:
            transport.close()
    return stats


def progress(stats: LoadStats, elapsed: float, inflight: int) -> dict[str, Any]:
    return {
        "t": round(elapsed, 3),
        "sent": stats.sent,
        "acked": len(stats.acked),
        "s4xx": sum(n for code, n in stats.statuses.items() if 400 <= code < 500),
        "s5xx": sum(n for code, n in stats.statuses.items() if code >= 500),
        "late": stats.late,
        "inflight": inflight,
    }


def load_main(spec: dict[str, Any]) -> None:
    import uvloop

    stats = uvloop.run(run_load(spec))
    Path(spec["acked_file"]).write_text(json.dumps(stats.acked))
    lat = {}
    for kind, values in stats.latency.items():
        values.sort()
        if values:
            lat[kind] = {
                f"p{q}_ms": round(
                    values[min(len(values) - 1, int(q / 100 * len(values)))] * 1000, 2
                )
                for q in (50, 99)
            } | {"max_ms": round(values[-1] * 1000, 2)}
    final = {
        "final": True,
        "sent": stats.sent,
        "acked": len(stats.acked),
        "statuses": {str(k): v for k, v in stats.statuses.items()},
        "item_statuses": dict(stats.item_statuses),
        "item_errors": stats.item_errors,
        "connection_errors": stats.connection_errors,
        "unanswered": stats.unanswered,
        "late": stats.late,
        "warmup_events": spec["warmup_events"],
        "acked_after_warmup": len(stats.acked) - stats.warmup_acked,
        "latency": lat,
    }
    print(json.dumps(final), flush=True)


# --------------------------------------------------------------------------- the server

HANDLERS = '''
"""Light handlers for the soak: one inline, one async, one sync (run in the thread pool)."""
import asyncio

from bridge import on


@on("soak.*", inline=True, priority=10)
def stamp(event, ctx):
    return None


@on("soak.rabbit")
async def enrich(event, ctx):
    await asyncio.sleep(0)


@on("soak.domain")
def audit(event, ctx):
    if not isinstance(event.data, dict):
        raise ValueError("data should be an object")
'''


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM in MB, thread and open-fd counts of ``pid``."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
        elif key == "Threads":
            out["threads"] = int(value)
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Metrics:
    """Scrapes the server's /metrics: spool backlog and published counts."""

    def __init__(self, port: int) -> None:
        import aiohttp

        self.url = f"http://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def get(self) -> dict[str, Any]:
        from prometheus_client.parser import text_string_to_metric_families

        async with self.session.get(self.url + "/metrics") as r:
            text = await r.text()
        errors: dict[str, float] = {}
        out: dict[str, Any] = {
            "errors_by": errors,
            "spool_events": 0.0,
            "received": 0.0,
            "retries": 0.0,
            "published_ok": 0.0,
            "published_failed": 0.0,
            "errors": 0.0,
        }
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "evbridge_spool_events":
                    out["spool_events"] += s.value
                elif s.name == "evbridge_published_total":
                    ok = s.labels.get("outcome") == "ok"
                    out["published_ok" if ok else "published_failed"] += s.value
                elif s.name == "evbridge_delivery_retries_total":
                    out["retries"] += s.value
                elif s.name == "evbridge_events_received_total":
                    out["received"] += s.value
                elif s.name == "evbridge_errors_total":
                    out["errors"] += s.value
                    errors[f"{s.labels['stage']}/{s.labels['error_type']}"] = s.value
        return out

    async def ready(self) -> bool:
        try:
            async with self.session.get(self.url + "/readyz") as r:
                return r.status == 200
        except OSError:
            return False

    async def close(self) -> None:
        await self.session.close()


def write_config(
    tmp: Path, unix: str, metrics_port: int, bootstrap: str, rabbit_url: str, names: dict[str, str]
) -> Path:
    (tmp / "soak_handlers.py").write_text(HANDLERS)
    config = {
        "listen": {"tcp": None, "unix": unix},
        "metrics": {"tcp": f"127.0.0.1:{metrics_port}"},
        "logging": {"level": "warning"},
        "handlers": {"modules": ["soak_handlers"], "entry_points": False},
        "shutdown": {"grace_s": 5},
        "sinks": [
            {"name": "kafka", "type": "kafka", "bootstrap_servers": bootstrap},
            {"name": "rmq", "type": "rabbitmq", "url": rabbit_url, "exchange": names["exchange"]},
        ],
        "routes": [
            {"name": "kafka", "match": "soak.kafka", "sink": "kafka", "topic": names["kafka"]},
            {"name": "rabbit", "match": "soak.rabbit", "sink": "rmq", "routing_key": "{type}"},
            {
                "name": "sync",
                "match": "soak.sync",
                "sink": "kafka",
                "topic": names["sync"],
                "delivery": "sync",
            },
        ],
        "delivery": {"mode": "durable", "spool_dir": str(tmp / "spool")},
    }
    path = tmp / "evbridge.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


# --------------------------------------------------------------------------- consumers


class Consumed:
    """Arrivals per destination: sequence number → times seen."""

    def __init__(self) -> None:
        self.seen: dict[str, Counter[int]] = {d: Counter() for d in DESTINATIONS}
        self.last_arrival = time.monotonic()

    def add(self, dest: str, event_id: str) -> None:
        self.seen[dest][seq_of(event_id)] += 1
        self.last_arrival = time.monotonic()


async def create_topics(bootstrap: str, names: Iterable[str], partitions: int = 3) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    deadline = time.monotonic() + 20
    while True:
        try:
            await admin.start()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    try:
        names = list(names)
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
        while True:
            described = await admin.describe_topics(names)
            if all(t["error_code"] == 0 and len(t["partitions"]) == partitions for t in described):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics {names} not visible: {described}")
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


async def consume_kafka(bootstrap: str, topics: dict[str, str], out: Consumed) -> None:
    """Read every partition of the topics from the start (no group: no rebalance waits)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        dest_of = {topic: dest for dest, topic in topics.items()}
        parts = [TopicPartition(t, p) for t in topics.values() for p in range(3)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, records in batches.items():
                dest = dest_of[tp.topic]
                for record in records:
                    out.add(dest, dict(record.headers)["ce_id"].decode())
    finally:
        await consumer.stop()


async def consume_rabbit(queue: Any, out: Consumed) -> None:
    """Count the queue's messages until cancelled. Acknowledged one by one after counting,
    on a robust connection: a broker restart (other tests on this machine restart the
    shared RabbitMQ) redelivers what was in flight — a duplicate, never a gap."""

    async def on_message(message: Any) -> None:
        out.add("rabbit", str(message.message_id))
        await message.ack()

    await queue.consume(on_message)
    await asyncio.Future()  # until cancelled


# --------------------------------------------------------------------------- orchestration


async def wait_for(predicate: Any, limit: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + limit
    while True:
        if await predicate():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {limit:g}s waiting for {what}")
        await asyncio.sleep(interval)


async def settle_idle(pid: int) -> dict[str, float]:
    """RSS once startup is over: the first run of samples 0.25 s apart within 1 %."""
    window: list[dict[str, float]] = []
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        window = [*window[-(SETTLE_SAMPLES - 1) :], proc_status(pid)]
        rss = [w["VmRSS"] for w in window]
        if len(window) == SETTLE_SAMPLES and max(rss) <= min(rss) * 1.01:
            break
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    last = window[-1]
    return {
        "rss_mb": round(statistics.median(rss), 2),
        "hwm_mb": round(last["VmHWM"], 2),
        "threads": last["threads"],
        "fds": last["fds"],
    }


def _child_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVBRIDGE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp), env.get("PYTHONPATH")) if p)
    return env


def _pin(cpu: int | None) -> Any:
    return None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))


async def soak(options: SoakOptions, log: Any = None) -> dict[str, Any]:
    """Run the soak and return its result (see `check` for the invariants).

    ``options.bootstrap`` None: a private Tansu is started and stopped here. ``log`` is
    a callable for progress lines (default: none).
    """
    import aio_pika

    say = log or (lambda _msg: None)
    tmp = options.workdir or Path(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))
    tmp.mkdir(parents=True, exist_ok=True)
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, load_cpu = (cpus[0], cpus[1]) if options.pin and len(cpus) >= 2 else (None, None)
    run = uuid.uuid4().hex[:10]
    names = {
        "kafka": f"soak-kafka-{run}",
        "sync": f"soak-sync-{run}",
        "exchange": f"soak-{run}",
    }
    tansu = None
    server: asyncio.subprocess.Process | None = None
    tasks: list[asyncio.Task[None]] = []
    metrics: Metrics | None = None
    load_avg_before = os.getloadavg()
    connection = await aio_pika.connect_robust(options.rabbitmq_url)
    try:
        bootstrap = options.bootstrap
        if bootstrap is None:
            tansu, bootstrap = bench_durable.start_tansu(tmp)
        await create_topics(bootstrap, (names["kafka"], names["sync"]))
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=2000)
        exchange = await channel.declare_exchange(
            names["exchange"], aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(names["exchange"], durable=True)
        await queue.bind(exchange, routing_key="#")

        unix = str(tmp / "soak.sock")
        metrics_port = bench_http._free_port()
        config = write_config(tmp, unix, metrics_port, bootstrap, options.rabbitmq_url, names)
        argv = [str(Path(sys.executable).with_name("evbridge")), "serve", "-c", str(config)]
        with (tmp / "evbridge.log").open("ab") as server_log:
            server = await asyncio.create_subprocess_exec(
                *argv,
                cwd=tmp,
                env=_child_env(tmp),
                stdin=subprocess.DEVNULL,
                stdout=server_log,
                stderr=subprocess.STDOUT,
                preexec_fn=_pin(server_cpu),
            )
        metrics = Metrics(metrics_port)
        started = time.monotonic()

        async def ready() -> bool:
            assert server is not None
            assert metrics is not None
            if server.returncode is not None:
                log_tail = (tmp / "evbridge.log").read_text()[-3000:]
                raise RuntimeError(f"evbridge serve exited: {log_tail}")
            return await metrics.ready()

        await wait_for(ready, START_TIMEOUT, "the server's /readyz")
        startup_s = time.monotonic() - started
        idle = await settle_idle(server.pid)
        idle["startup_s"] = round(startup_s, 2)
        say(f"idle: {idle}")

        consumed = Consumed()
        tasks.append(
            asyncio.create_task(
                consume_kafka(bootstrap, {"kafka": names["kafka"], "sync": names["sync"]}, consumed)
            )
        )
        tasks.append(asyncio.create_task(consume_rabbit(queue, consumed)))

        spec = {
            "unix": unix,
            "run": run,
            "duration": options.duration,
            "rate": options.rate,
            "batch_share": options.batch_share,
            "batch_size": options.batch_size,
            "connections": options.connections,
            "acked_file": str(tmp / "acked.json"),
            "warmup_events": options.warmup_events,
        }
        samples, final = await drive(options, server.pid, spec, metrics, load_cpu, say)
        load_avg_after = os.getloadavg()
        hwm_after_load = proc_status(server.pid)["VmHWM"]

        # Drain: the spool empties, then every acknowledged event must arrive.
        acked = json.loads((tmp / "acked.json").read_text())
        want: dict[str, set[int]] = {d: set() for d in DESTINATIONS}
        for seq in acked:
            kind = KINDS[seq % 10]
            if kind in want:
                want[kind].add(seq)
        drain_start = time.monotonic()

        async def spool_empty() -> bool:
            assert metrics is not None
            return bool((await metrics.get())["spool_events"] == 0)

        async def all_arrived() -> bool:
            for task in tasks:
                if task.done():
                    task.result()  # a consumer that died says why
            return all(want[d] <= consumed.seen[d].keys() for d in DESTINATIONS)

        with contextlib.suppress(RuntimeError):  # missing events are reported, not raised
            await wait_for(spool_empty, options.drain_timeout, "the spool to drain", 0.25)
        with contextlib.suppress(RuntimeError):
            await wait_for(all_arrived, options.drain_timeout, "every acked event", 0.25)

        async def quiet() -> bool:
            return time.monotonic() - consumed.last_arrival > 2.0

        # Late duplicates (redeliveries) still count.
        await wait_for(quiet, 30, "the consumers to go quiet", 0.25)
        drain_s = time.monotonic() - drain_start
        after = proc_status(server.pid)
        server_metrics = await metrics.get()
        log_tail = (tmp / "evbridge.log").read_text(errors="replace")[-3000:]
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if server is not None and server.returncode is None:
            server.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(server.wait(), 20)
            except TimeoutError:
                server.kill()
                await server.wait()
        if metrics is not None:
            await metrics.close()
        # Closed before the delete: a robust channel would declare the queue again.
        await connection.close()
        try:
            async with await aio_pika.connect(options.rabbitmq_url) as plain:
                cleanup = await plain.channel()
                await cleanup.queue_delete(names["exchange"])
                await cleanup.exchange_delete(names["exchange"])
        except Exception as exc:  # leftovers are harmless: unique names
            say(f"could not delete the queue and exchange {names['exchange']}: {exc!r}")
        if tansu is not None:
            bench_durable.stop_tansu(tansu)
        if options.workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)

    delivery = {}
    for dest in DESTINATIONS:
        seen = consumed.seen[dest]
        missing = sorted(want[dest] - seen.keys())
        delivery[dest] = {
            "acked": len(want[dest]),
            "delivered": len(want[dest] & seen.keys()),
            "missing": len(missing),
            "missing_sample": [f"{run}-{s}" for s in missing[:5]],
            "duplicates": sum(n - 1 for n in seen.values()),
            "unacked_arrivals": len(seen.keys() - want[dest]),
        }
    under_load = [s for s in samples if s["t"] <= options.duration]
    max_sampled = max((s["rss_mb"] for s in under_load), default=0.0)
    result: dict[str, Any] = {
        "options": {k: v for k, v in asdict(options).items() if k not in ("workdir", "targets")},
        "targets": asdict(options.targets),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_avg_before": [round(x, 2) for x in load_avg_before],
            "load_avg_after": [round(x, 2) for x in load_avg_after],
        },
        "idle": idle,
        "load": {k: v for k, v in final.items() if k != "final"},
        "samples": samples,
        "delivery": delivery,
        "summary": {
            # The kernel's RSS counters are approximate (per-thread caches), so a sample can
            # read a little above VmHWM: the peak is the larger of the two.
            "peak_rss_mb": round(max(hwm_after_load, max_sampled), 2),
            "max_sampled_rss_mb": round(max_sampled, 2),
            "hwm_after_drain_mb": round(after["VmHWM"], 2),
            "rss_after_drain_mb": round(after["VmRSS"], 2),
            "growth": rss_growth(samples, options.duration, options.warmup_share),
            "accepted_per_s": round(final["acked_after_warmup"] / options.duration, 1),
            "drain_s": round(drain_s, 2),
            # Counted by the server (evbridge_errors_total), by stage/error_type.
            "server_errors": server_metrics["errors_by"],
            "published_ok": server_metrics["published_ok"],
            "published_failed": server_metrics["published_failed"],
            # Retries of spooled events (a broker outage during the run shows here).
            "delivery_retries": server_metrics["retries"],
            "threads_max": max((s["threads"] for s in samples), default=0),
            "fds_max": max((s["fds"] for s in samples), default=0),
        },
    }
    result["server_log_tail"] = log_tail
    result["failures"] = check(result, options.targets)
    return result


async def drive(
    options: SoakOptions,
    pid: int,
    spec: dict[str, Any],
    metrics: Metrics,
    load_cpu: int | None,
    say: Any,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the load process, sampling the server every ``options.interval`` seconds."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--load",
        json.dumps(spec),
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=_pin(load_cpu),
    )
    latest: dict[str, Any] = {"t": 0.0, "acked": 0, "sent": 0, "s4xx": 0, "s5xx": 0}
    final: dict[str, Any] | None = None
    started = asyncio.Event()

    async def read() -> None:
        nonlocal latest, final
        assert proc.stdout is not None
        async for line in proc.stdout:
            record = json.loads(line)
            if record.get("final"):
                final = record
            elif record.get("started"):
                latest = {**latest, "acked": record["acked"]}
                started.set()
            else:
                latest = record

    reader = asyncio.create_task(read())
    samples: list[dict[str, Any]] = []
    try:
        waiter = asyncio.create_task(started.wait())
        await asyncio.wait(
            [waiter, asyncio.create_task(proc.wait())],
            timeout=120,
            return_when=asyncio.FIRST_COMPLETED,
        )
        waiter.cancel()
        if not started.is_set():
            raise RuntimeError("the load generator did not finish its warm-up")
        say("warm-up done, load started")
        t0 = time.monotonic()
        first = await metrics.get()
        prev_t, prev_cpu = 0.0, cpu_seconds(pid)
        prev_rx, prev_pub = first["received"], first["published_ok"]
        while proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), options.interval)
            t = time.monotonic() - t0
            if t > options.duration and proc.returncode is not None:
                break
            status = proc_status(pid)
            m = await metrics.get()
            cpu = cpu_seconds(pid)
            dt = max(t - prev_t, 1e-6)
            sample = {
                "t": round(t, 2),
                "rss_mb": round(status["VmRSS"], 2),
                "hwm_mb": round(status["VmHWM"], 2),
                "threads": status["threads"],
                "fds": status["fds"],
                "received_per_s": round((m["received"] - prev_rx) / dt, 1),
                "published_per_s": round((m["published_ok"] - prev_pub) / dt, 1),
                "server_cpu": round((cpu - prev_cpu) / dt, 3),
                "spool_events": m["spool_events"],
                "s4xx": latest["s4xx"],
                "s5xx": latest["s5xx"],
            }
            samples.append(sample)
            prev_t, prev_rx, prev_pub, prev_cpu = t, m["received"], m["published_ok"], cpu
            say(json.dumps(sample))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await reader
    if proc.returncode != 0 or final is None:
        raise RuntimeError(f"the load generator failed (exit {proc.returncode})")
    return samples, final


# --------------------------------------------------------------------------- output


def write_outputs(result: dict[str, Any], out_dir: Path, stamp: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"soak-{stamp}.json"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    csv_path = out_dir / f"soak-{stamp}.csv"
    samples = result["samples"]
    if samples:
        with csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(samples[0]))
            writer.writeheader()
            writer.writerows(samples)
    return json_path, csv_path


def plot(result: dict[str, Any], path: Path) -> None:
    """Two panels over time: RSS (with idle and peak targets) and events/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    t = [s["t"] / 60 for s in samples]
    targets = result["targets"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    top.plot(t, [s["rss_mb"] for s in samples], label="RSS (VmRSS)", color="tab:blue")
    top.plot(t, [s["hwm_mb"] for s in samples], label="peak (VmHWM)", color="tab:blue", ls=":")
    top.axhline(targets["peak_rss_mb"], color="tab:red", ls="--", label="target under load")
    top.axhline(targets["idle_rss_mb"], color="tab:orange", ls="--", label="idle target")
    top.axhline(result["idle"]["rss_mb"], color="tab:gray", ls="-.", label="idle RSS measured")
    growth = result["summary"]["growth"]
    if growth.get("growth") is not None:
        start = growth["window_s"][0] / 60
        top.axvspan(start, t[-1] if t else start, color="tab:green", alpha=0.06)
        top.text(
            start,
            targets["peak_rss_mb"] * 0.93,
            f" growth window: {growth['growth']:+.1%} (target ≤ {targets['growth']:.0%})",
            fontsize=8,
        )
    top.set_ylabel("MB")
    top.set_ylim(0, targets["peak_rss_mb"] * 1.1)
    top.legend(loc="lower right", fontsize=8)
    top.set_title("evbridge soak: RSS and throughput (durable, Kafka + RabbitMQ)")
    bottom.plot(t, [s["received_per_s"] for s in samples], label="received over HTTP")
    bottom.plot(
        t,
        [s["published_per_s"] for s in samples],
        label="published to brokers (domain events are not)",
    )
    bottom.axhline(result["options"]["rate"], color="tab:gray", ls="--", label="target rate")
    highest = max([result["options"]["rate"], *(s["received_per_s"] for s in samples)])
    bottom.set_ylim(0, highest * 1.15)
    bottom.set_ylabel("events/s")
    bottom.set_xlabel("minutes since the load started")
    bottom.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def summary_lines(result: dict[str, Any]) -> list[str]:
    s, idle, load = result["summary"], result["idle"], result["load"]
    g = s["growth"]
    lines = [
        f"idle RSS {idle['rss_mb']} MB (threads {idle['threads']:.0f}), "
        f"peak RSS {s['peak_rss_mb']} MB, max sampled {s['max_sampled_rss_mb']} MB, "
        f"after drain {s['rss_after_drain_mb']} MB",
        f"growth {g.get('growth')} over {g.get('window_s')} s "
        f"({g.get('first_quarter_median_mb')} → {g.get('last_quarter_median_mb')} MB, "
        f"slope {g.get('slope_mb_per_min')} MB/min)",
        f"events sent {load['sent']}, acknowledged {load['acked']} "
        f"({s['accepted_per_s']}/s), statuses {load['statuses']}, late {load['late']}, "
        f"latency {load['latency']}",
    ]
    for dest, d in result["delivery"].items():
        lines.append(
            f"{dest}: acked {d['acked']}, delivered {d['delivered']}, missing {d['missing']}, "
            f"duplicates {d['duplicates']}"
        )
    lines.append(
        f"load average before {result['machine']['load_avg_before']}, "
        f"after {result['machine']['load_avg_after']}"
    )
    lines.append("FAILED: " + "; ".join(result["failures"]) if result["failures"] else "all held")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s, open loop")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--batch-share", type=float, default=0.5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup-events", type=int, default=SoakOptions.warmup_events)
    parser.add_argument("--bootstrap", help="a running Kafka-protocol broker (default: Tansu)")
    parser.add_argument("--rabbitmq-url", default=SoakOptions.rabbitmq_url)
    parser.add_argument("--pin", action="store_true", help="server and load on separate CPUs")
    parser.add_argument("--out", type=Path, default=HERE, help="directory for JSON and CSV")
    parser.add_argument("--plot", type=Path, default=HERE / "soak.png")
    parser.add_argument("--replot", type=Path, help="redraw --plot from a recorded JSON result")
    parser.add_argument("--load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        load_main(json.loads(args.load))
        return
    if args.replot:
        plot(json.loads(args.replot.read_text()), args.plot)
        return
    options = SoakOptions(
        duration=args.duration,
        rate=args.rate,
        interval=args.interval,
        batch_size=args.batch_size,
        batch_share=args.batch_share,
        connections=args.connections,
        warmup_events=args.warmup_events,
        bootstrap=args.bootstrap,
        rabbitmq_url=args.rabbitmq_url,
        pin=args.pin,
    )
    import uvloop

    result = uvloop.run(soak(options, log=lambda msg: print(msg, flush=True)))
    result["command"] = " ".join(["python", *sys.argv])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path, csv_path = write_outputs(result, args.out, stamp)
    plot(result, args.plot)
    print("\n".join(summary_lines(result)))
    print(f"wrote {json_path}, {csv_path}, {args.plot}")
    sys.exit(1 if result["failures"] else 0)


if __name__ == "__main__":
    main()
