"""Two buses in one process, each with its own `Metrics`: neither writes to the other's
(nor to the process default): spool counters, sink gauges."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge import Bus, Event
from bridge.config import RouteConfig
from bridge.handlers import HandlerRegistry
from bridge.metrics import METRICS, Metrics
from bridge.sinks.base import Outgoing
from bridge.sinks.memory import MemoryRoute
from bridge.spool import codec
from tests.unit.spool_helpers import ROUTE_TYPES
from tests.unit.test_dispatch import closed, spooling_config


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def test_two_buses_count_their_spool_in_their_own_metrics(
    tmp_path: Path, registry: HandlerRegistry
) -> None:
    mine, yours = Metrics(), Metrics()
    default_commits = sample(METRICS, "evbridge_spool_commit_records_sum")
    default_recovered = sample(METRICS, "evbridge_spool_recovered_total")

    def buses() -> tuple[Bus, Bus]:
        one = Bus(spooling_config(tmp_path, "s"), registry=registry, metrics=mine)
        two = Bus(spooling_config(tmp_path / "b", "s"), registry=registry, metrics=yours)
        return one, two

    one, two = buses()
    async with one, two:
        closed(one, "s")
        closed(two, "s")
        await one.emit_many([Event(type="x") for _ in range(2)])
        await two.emit_many([Event(type="x") for _ in range(7)])
        # Group commits: the records each bus's spool wrote, counted where that bus counts.
        assert sample(mine, "evbridge_spool_commit_records_sum") == 2
        assert sample(yours, "evbridge_spool_commit_records_sum") == 7
    # Started again on the same directories: each bus recovers its own undelivered events.
    one, two = buses()
    async with one, two:
        closed(one, "s")
        closed(two, "s")
        assert sample(mine, "evbridge_spool_recovered_total") == 2
        assert sample(yours, "evbridge_spool_recovered_total") == 7
    assert sample(METRICS, "evbridge_spool_commit_records_sum") == default_commits
    assert sample(METRICS, "evbridge_spool_recovered_total") == default_recovered


def test_a_refused_spool_record_is_counted_in_the_decoders_metrics() -> None:
    own = Metrics()
    labels = {"stage": "spool_recovery", "error_type": codec.InvalidRecord.code}
    default_before = sample(METRICS, "evbridge_errors_total", labels)
    recorded = codec.encode(
        "mem", Outgoing(Event(type="test.event", id="e1", source="s"), "r", MemoryRoute(), None)
    )
    other = RouteConfig(name="o", match="test.*", sink="other", options=MemoryRoute(topic="x"))
    with pytest.raises(codec.InvalidRecord):
        codec.Decoder(ROUTE_TYPES, [other], metrics=own).decode(recorded)
    assert sample(own, "evbridge_errors_total", labels) == 1
    assert sample(METRICS, "evbridge_errors_total", labels) == default_before
