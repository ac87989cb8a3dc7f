"""Counters and histograms for the event loop's hot path, and their collector.

Handler and publish statistics are updated several times per event, so they
are plain integers and bucket counts updated without locks on the event loop,
and turned into Prometheus families only when scraped, by `FastCollector`.
`bridge.metrics.Metrics` holds the instances.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar


class CounterChild:
    """One labelled series of a `FastCounter`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class HistogramChild:
    """One labelled series of a `FastHistogram`."""

    __slots__ = ("bounds", "buckets", "exemplars", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)
        self.sum = 0.0
        #: The latest trace id per bucket, written only while tracing is on (`bridge.tracing`).
        self.exemplars: list[Exemplar | None] | None = None

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def exemplar(self, trace_id: str, value: float, timestamp: float) -> None:
        """Keep ``trace_id`` as the exemplar of ``value``'s bucket (OpenMetrics scrapes)."""
        if self.exemplars is None:
            self.exemplars = [None] * len(self.buckets)
        self.exemplars[bisect_left(self.bounds, value)] = Exemplar(
            {"trace_id": trace_id}, value, timestamp
        )


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
            cumulative: list[Any] = []
            acc = 0
            exemplars = child.exemplars
            for i, (edge, count) in enumerate(zip(edges, child.buckets, strict=True)):
                acc += count
                found = exemplars[i] if exemplars is not None else None
                cumulative.append((edge, acc) if found is None else (edge, acc, found))
            family.add_metric(list(labels), cumulative, child.sum)
        return family


class FastCollector(Collector):
    """Yields the families of its `FastCounter` and `FastHistogram` metrics at each scrape."""

    def __init__(self, metrics: list[FastCounter | FastHistogram]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for metric in self.metrics:
            yield metric.family()
