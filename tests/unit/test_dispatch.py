"""One event path: per-route delivery, the ``Prefer`` rule, the bus's spool API, metrics per bus."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge import Bus, Event, parse_config
from bridge.config import Config
from bridge.errors import SpoolError
from bridge.handlers import Context, HandlerRegistry
from bridge.metrics import METRICS, Metrics
from bridge.prefer import Preference
from tests.brokers import wait_until
from tests.unit.test_durable import GateSink, config, gate


def gauge(metrics: Metrics, name: str, sink: str) -> float | None:
    text = generate_latest(metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("sink") == sink:
                return float(sample.value)
    return None


def spooling_config(tmp_path: Path, sink: str) -> Config:
    return parse_config(
        {
            "sinks": [{"name": sink, "type": "gate"}],
            "routes": [{"name": "all", "match": "*", "sink": sink}],
            "handlers": {"entry_points": False},
            "shutdown": {"grace_s": 0.05},
            "delivery": {"mode": "durable", "spool_dir": str(tmp_path / sink)},
        },
        {},
    )


def closed(bus: Bus, name: str) -> GateSink:
    sink = bus.sinks[name]
    assert isinstance(sink, GateSink)
    sink.open = False
    return sink


async def test_two_buses_with_spools_both_report_their_gauges(
    tmp_path: Path, registry: HandlerRegistry
) -> None:
    one = Bus(spooling_config(tmp_path, "one"), registry=registry)
    two = Bus(spooling_config(tmp_path, "two"), registry=registry)
    async with one, two:
        closed(one, "one")
        closed(two, "two")
        await one.emit_many([Event(type="x") for _ in range(3)])
        await two.emit_many([Event(type="x") for _ in range(5)])
        # Both on the default metrics: neither replaces the other's spool gauges.
        assert gauge(METRICS, "evbridge_spool_events", "one") == 3
        assert gauge(METRICS, "evbridge_spool_events", "two") == 5
    assert gauge(METRICS, "evbridge_spool_events", "one") is None
    assert gauge(METRICS, "evbridge_spool_events", "two") is None


async def test_buses_with_their_own_metrics_keep_their_own(
    tmp_path: Path, registry: HandlerRegistry
) -> None:
    mine, yours = Metrics(), Metrics()
    one = Bus(spooling_config(tmp_path, "s"), registry=registry, metrics=mine)
    two = Bus(spooling_config(tmp_path / "b", "s"), registry=registry, metrics=yours)
    async with one, two:
        closed(one, "s")
        closed(two, "s")
        await one.emit_many([Event(type="x") for _ in range(2)])
        await two.emit_many([Event(type="x") for _ in range(7)])
        assert gauge(mine, "evbridge_spool_events", "s") == 2
        assert gauge(yours, "evbridge_spool_events", "s") == 7
        # Counters too: each bus counts what it did, only in its own metrics.
        assert mine.events_unhandled.child().value == 2
        assert yours.events_unhandled.child().value == 7
        # The deliverers' retries too (the gates stay closed, so they retry).
        for metrics in (mine, yours):
            await wait_until(
                lambda m=metrics: bool(gauge(m, "evbridge_delivery_retries_total", "s")),
                timeout=5,
                what="a retry counted",
            )
        assert METRICS.spool_gauges.sources == 0


async def test_prefer_wait_bounds_a_sync_route_without_a_spool(
    tmp_path: Path, registry: HandlerRegistry
) -> None:
    async with Bus(config(tmp_path, mode="sync"), registry=registry) as bus:
        assert not bus.has_spool
        sink = gate(bus)
        sink.stall.clear()
        wait = Preference("sync", 0.05)
        result = await asyncio.wait_for(bus.emit(Event(type="t.x"), delivery=wait), 5)
        assert result.status == "rejected"
        assert result.error is not None
        assert (result.error.code, result.error.retriable) == ("sink_timeout", True)
        batch = await asyncio.wait_for(
            bus.emit_many([Event(type="t.x"), Event(type="t.y")], delivery=wait), 5
        )
        assert [r.error.code for r in batch if r.error] == ["sink_timeout", "sink_timeout"]
        sink.stall.set()
        assert (await bus.emit(Event(type="t.x"), delivery=wait)).status == "published"
        # The publishes that ran out went on: the events arrive (a retry would duplicate them).
        assert len(sink.published) == 4


async def test_a_mixed_batch_is_one_call_per_sink_and_mode(
    tmp_path: Path, registry: HandlerRegistry
) -> None:
    routes = [
        {"name": "safe", "match": "safe.*", "sink": "g", "delivery": "durable"},
        {"name": "rest", "match": "*", "sink": "g"},
    ]
    async with Bus(config(tmp_path, mode="sync", routes=routes), registry=registry) as bus:
        calls: list[int] = []
        sink = gate(bus)
        publish_many = sink.publish_many

        async def counting(items: Any) -> Any:
            calls.append(len(items))
            return await publish_many(items)

        sink.publish_many = counting  # type: ignore[method-assign]
        batch = [Event(type=t) for t in ("a", "safe.a", "b", "safe.b", "c")]
        results = await bus.emit_many(batch)
        assert [r.status for r in results] == [
            "published", "spooled", "published", "spooled", "published",
        ]  # fmt: skip
        assert calls[0] == 3  # the three sync events in one publish


async def test_the_bus_spool_api(tmp_path: Path, registry: HandlerRegistry) -> None:
    plain = Bus(config(tmp_path / "plain", mode="sync"), registry=registry)
    assert (plain.has_spool, plain.spool_status(), plain.spool_refusals()) == (False, None, [])
    assert plain.sinks_behind_spool() == frozenset()
    with pytest.raises(SpoolError) as refused:
        await plain.replay_dead_letters()
    assert refused.value.code == "no_spool"
    async with Bus(config(tmp_path), registry=registry) as bus:
        assert bus.has_spool
        gate(bus).open = False
        await bus.emit(Event(type="t.x"))
        status = bus.spool_status()
        assert status is not None
        assert status["pending"]["g"]["events"] == 1  # type: ignore[index]
        assert bus.spool_refusals() == []
        assert bus.sinks_behind_spool() == frozenset({"g"})
        assert await bus.replay_dead_letters("g") == 0


async def test_context_needs_no_bus() -> None:
    ctx = Context(Event(type="x"), depth=0, max_depth=1)
    await ctx.emit(Event(type="y"))
    assert [e.type for e in ctx.follow_ups] == ["y"]
    assert not hasattr(ctx, "bus")
