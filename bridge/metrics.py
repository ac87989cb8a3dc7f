"""Every Prometheus collector evbridge exports, in one place (prefix ``evbridge_``).

Per-handler statistics sit on the hot path (several per event), so they are
plain integers and bucket counts updated without locks on the event loop and
turned into Prometheus families only when scraped. Everything else uses
prometheus-client's collectors directly. No label carries an unbounded value:
handler names come from code, sink and route names from config.
"""

from __future__ import annotations

import collections
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import Final, NamedTuple, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip


class CounterChild:
    """One labelled series of a `FastCounter`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class HistogramChild:
    """One labelled series of a `FastHistogram`."""

    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(self.bounds, value)] += 1
        self.sum += value


class FastCounter:
    """A labelled counter for the event loop's hot path: no locks, read at scrape."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.children: dict[tuple[str, ...], CounterChild] = {}

    def child(self, *labels: str) -> CounterChild:
        found = self.children.get(labels)
        if found is None:
            found = self.children[labels] = CounterChild()
        return found

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, child in list(self.children.items()):
            family.add_metric(list(labels), child.value)
        return family


class FastHistogram:
    """A labelled histogram for the event loop's hot path: no locks, read at scrape."""

    def __init__(
        self, name: str, doc: str, labels: tuple[str, ...], bounds: tuple[float, ...]
    ) -> None:
        self.name, self.doc, self.labels, self.bounds = name, doc, labels, bounds
        self.children: dict[tuple[str, ...], HistogramChild] = {}

    def child(self, *labels: str) -> HistogramChild:
        found = self.children.get(labels)
        if found is None:
            found = self.children[labels] = HistogramChild(self.bounds)
        return found

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        edges = [*("+Inf" if b == float("inf") else repr(b) for b in self.bounds), "+Inf"]
        for labels, child in list(self.children.items()):
            cumulative, acc = [], 0
            for edge, count in zip(edges, child.buckets, strict=True):
                acc += count
                cumulative.append((edge, acc))
            family.add_metric(list(labels), cumulative, child.sum)
        return family


class _FastCollector(Collector):
    def __init__(self, metrics: list[FastCounter | FastHistogram]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for metric in self.metrics:
            yield metric.family()


class SpoolGauges(NamedTuple):
    """A snapshot of the spool for the gauges, taken at scrape time."""

    events: Mapping[str, int]
    bytes: Mapping[str, int]
    oldest_age_s: Mapping[str, float]
    dead_letters: Mapping[str, int]
    disk_bytes: int
    max_bytes: int
    full: bool


class SpoolGaugeCollector(Collector):
    """The spool gauges, read at each scrape from every spool added with `add`.

    Several buses may share one `Metrics` (the module default, say): each
    running spool is one source, and the gauges are their sum (``full``: any
    of them), as the handler thread gauges are over every pool.
    """

    def __init__(self) -> None:
        self._sources: list[Callable[[], SpoolGauges]] = []

    def add(self, source: Callable[[], SpoolGauges]) -> None:
        """Report ``source`` (a running spool's snapshot) from the next scrape on."""
        if source not in self._sources:
            self._sources.append(source)

    def discard(self, source: Callable[[], SpoolGauges]) -> None:
        """Stop reporting ``source``; a no-op if it is not reported."""
        if source in self._sources:
            self._sources.remove(source)

    @property
    def sources(self) -> int:
        """How many spools report now."""
        return len(self._sources)

    def collect(self) -> Iterator[Metric]:
        snaps = [source() for source in list(self._sources)]
        if not snaps:
            return
        snap = snaps[0] if len(snaps) == 1 else _sum_gauges(snaps)
        per_sink: list[tuple[str, str, Mapping[str, float] | Mapping[str, int]]] = [
            ("evbridge_spool_events", "Events in the spool waiting for delivery.", snap.events),
            ("evbridge_spool_bytes", "Bytes of events waiting for delivery.", snap.bytes),
            (
                "evbridge_spool_oldest_age_seconds",
                "Age of the oldest event waiting for delivery (0 when none).",
                snap.oldest_age_s,
            ),
            (
                "evbridge_spool_dead_letters",
                "Events in the local dead-letter area (see `evbridge spool`).",
                snap.dead_letters,
            ),
        ]
        for name, doc, values in per_sink:
            family = GaugeMetricFamily(name, doc, labels=("sink",))
            for sink, value in sorted(values.items()):
                family.add_metric([sink], float(value))
            yield family
        yield GaugeMetricFamily(
            "evbridge_spool_disk_bytes", "Bytes of spool files on disk.", value=snap.disk_bytes
        )
        yield GaugeMetricFamily(
            "evbridge_spool_max_bytes", "delivery.max_spool_bytes.", value=snap.max_bytes
        )
        yield GaugeMetricFamily(
            "evbridge_spool_full",
            "1 while new events are refused because the spool is full.",
            value=1.0 if snap.full else 0.0,
        )


def _sum_gauges(snaps: list[SpoolGauges]) -> SpoolGauges:
    def per_sink(values: list[Mapping[str, int]]) -> dict[str, int]:
        total: collections.Counter[str] = collections.Counter()
        for value in values:
            total.update(value)
        return dict(total)

    oldest: dict[str, float] = {}
    for snap in snaps:
        for sink, age in snap.oldest_age_s.items():
            oldest[sink] = max(age, oldest.get(sink, 0.0))
    return SpoolGauges(
        events=per_sink([s.events for s in snaps]),
        bytes=per_sink([s.bytes for s in snaps]),
        oldest_age_s=oldest,
        dead_letters=per_sink([s.dead_letters for s in snaps]),
        disk_bytes=sum(s.disk_bytes for s in snaps),
        max_bytes=sum(s.max_bytes for s in snaps),
        full=any(s.full for s in snaps),
    )


class ThreadGauges(NamedTuple):
    """A snapshot of one handler thread pool (`bridge.threads.HandlerThreads`)."""

    size: int
    busy: int
    stuck: Mapping[str, int]


class _ThreadPool(Protocol):
    def gauges(self) -> ThreadGauges: ...


class HandlerThreadCollector(Collector):
    """The handler thread gauges, summed over every live pool (one per bus), read at scrape."""

    def __init__(self) -> None:
        self._pools: weakref.WeakSet[_ThreadPool] = weakref.WeakSet()
        #: Tasks of ``async def`` handlers that ignored their cancellation (`bridge.pipeline`).
        self.abandoned: Callable[[], int] = lambda: 0

    def add(self, pool: _ThreadPool) -> None:
        self._pools.add(pool)

    def collect(self) -> Iterator[Metric]:
        snaps = [pool.gauges() for pool in list(self._pools)]
        stuck: collections.Counter[str] = collections.Counter()
        for snap in snaps:
            stuck.update(snap.stuck)
        yield GaugeMetricFamily(
            "evbridge_handler_threads_max",
            "Threads allowed for plain def handlers (handlers.threads, every bus together).",
            value=sum(s.size for s in snaps),
        )
        yield GaugeMetricFamily(
            "evbridge_handler_threads_busy",
            "Handler threads running a plain def handler now.",
            value=sum(s.busy for s in snaps),
        )
        family = GaugeMetricFamily(
            "evbridge_handler_threads_stuck",
            "Handler threads still running a plain def handler past its timeout "
            "(a thread cannot be stopped; the run was recorded as timeout).",
            labels=("handler",),
        )
        for handler, n in sorted(stuck.items()):
            family.add_metric([handler], float(n))
        yield family
        yield GaugeMetricFamily(
            "evbridge_handler_tasks_abandoned",
            "async def handlers that ignored their cancellation and still run unattended.",
            value=self.abandoned(),
        )


class Metrics:
    """The collectors, registered in `registry` (not the global default one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.handler_runs = FastCounter(
            "evbridge_handler_runs", "Handler runs by outcome.", ("handler", "outcome")
        )
        self.handler_duration = FastHistogram(
            "evbridge_handler_duration_seconds", "Handler run time.", ("handler",), BUCKETS
        )
        self.published = FastCounter(
            "evbridge_published", "Events published, by sink and outcome.", ("sink", "outcome")
        )
        self.publish_duration = FastHistogram(
            "evbridge_publish_duration_seconds",
            "Time for one publish call (a batch) to a sink.",
            ("sink",),
            BUCKETS,
        )
        self.publish_batch_size = FastHistogram(
            "evbridge_publish_batch_size",
            "Events per publish call to a sink.",
            ("sink",),
            (1, 2, 5, 10, 50, 100, 500, 1000, 5000),
        )
        self.events_unhandled = FastCounter(
            "evbridge_events_unhandled", "Events no handler matched (not an error).", ()
        )
        self.subscription_dropped = FastCounter(
            "evbridge_subscription_dropped",
            "Events subscribers lost to queue overflow (drop_oldest), by the bound reached.",
            ("bound",),
        )
        self.subscription_disconnected = FastCounter(
            "evbridge_subscription_disconnected",
            "Subscribers disconnected by queue overflow (overflow=disconnect), by the bound.",
            ("bound",),
        )
        r.register(
            _FastCollector(
                [
                    self.handler_runs,
                    self.handler_duration,
                    self.published,
                    self.publish_duration,
                    self.publish_batch_size,
                    self.events_unhandled,
                    self.subscription_dropped,
                    self.subscription_disconnected,
                ]
            )
        )
        self.events_received = Counter(
            "evbridge_events_received", "Events received, by transport.", ["transport"], registry=r
        )
        self.events_rejected = Counter(
            "evbridge_events_rejected", "Events rejected, by reason code.", ["reason"], registry=r
        )
        self.request_duration = Histogram(
            "evbridge_request_duration_seconds",
            "HTTP request time.",
            ["transport", "endpoint"],
            buckets=BUCKETS,
            registry=r,
        )
        self.inflight = Gauge("evbridge_inflight_events", "Events being processed now.", registry=r)
        self.inflight_bytes = Gauge(
            "evbridge_inflight_bytes",
            "Bytes of request bodies being processed now (limits.max_inflight_bytes).",
            registry=r,
        )
        self.errors = Counter(
            "evbridge_errors",
            "Errors, by pipeline stage and error type.",
            ["stage", "error_type"],
            registry=r,
        )
        self.ready = Gauge("evbridge_ready", "1 when /readyz answers 200.", registry=r)
        self.sink_up = Gauge(
            "evbridge_sink_up",
            "1 while a broker sink is connected and its broker answers probes, else 0.",
            ["sink"],
            registry=r,
        )
        self.loop_lag = Gauge(
            "evbridge_event_loop_lag_seconds",
            "The worst event-loop lag seen by the watchdog in the last 60 s.",
            registry=r,
        )

        self.subscribers = Gauge(
            "evbridge_subscribers", "Live subscriptions (in-process and SSE).", registry=r
        )
        self.subscription_queued_bytes = Gauge(
            "evbridge_subscription_queued_bytes",
            "Estimated bytes of events queued for subscribers, all together "
            "(limits.max_total_subscriber_bytes).",
            registry=r,
        )

        # Durable delivery (bridge/spool, bridge/lane.py, bridge/deadletter.py).
        self.spool_recovered = Counter(
            "evbridge_spool_recovered",
            "Records found pending in the spool at startup and sent again "
            "(each may be a duplicate of one delivered before a crash).",
            registry=r,
        )
        self.spool_corrupt_records = Counter(
            "evbridge_spool_corrupt_records",
            "Damaged regions of spool files skipped or cut (each lost one record or more).",
            registry=r,
        )
        self.spool_commit_duration = Histogram(
            "evbridge_spool_commit_duration_seconds",
            "Time for one group commit (write and fsync) to the spool.",
            buckets=BUCKETS,
            registry=r,
        )
        self.spool_commit_records = Histogram(
            "evbridge_spool_commit_records",
            "Records per group commit to the spool.",
            buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000, 10000),
            registry=r,
        )
        self.delivery_retries = Counter(
            "evbridge_delivery_retries",
            "Spooled events scheduled for another publish attempt after a retriable failure.",
            ["sink"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "evbridge_dead_lettered",
            "Spooled events given up on, by sink and reason (an error code).",
            ["sink", "reason"],
            registry=r,
        )
        self.spool_gauges = SpoolGaugeCollector()
        r.register(self.spool_gauges)
        self.handler_threads = HandlerThreadCollector()
        r.register(self.handler_threads)

    def error(self, stage: str, error_type: str) -> None:
        """Count one error. ``stage`` ∈ ingest, handler, route, publish, delivery, connect."""
        self.errors.labels(stage, error_type).inc()


#: The default metrics, for whoever does not bring its own: a `bridge.Bus` built
#: without ``metrics=`` and the server (which exposes ``METRICS.registry``).
METRICS: Final = Metrics()
