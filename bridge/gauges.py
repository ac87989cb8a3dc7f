"""Gauges read from running objects at scrape time: the spool and the handler threads.

Nothing here is updated on the event path: each scrape asks every source (a
spool's `SpoolGauges` snapshot, a thread pool's `ThreadGauges`) for its state,
and several buses sharing one `bridge.metrics.Metrics` report their sum.
"""

from __future__ import annotations

import collections
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple, Protocol

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


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
