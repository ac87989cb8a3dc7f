"""Deduplication windows: bounded, expiring, and their use by sources and the ingest."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from bridge import Bus, Context, Event, parse_config
from bridge.dedupe import DedupeConfig, IngestDedupe, Window
from bridge.errors import ConfigError
from bridge.handlers import HandlerRegistry
from bridge.metrics import Metrics
from bridge.results import EmitResult, ErrorInfo, HandlerOutcome
from bridge.sources.base import Incoming, Verdict
from bridge.sources.rabbitmq import RabbitSourceConfig
from bridge.sources.runner import Runner


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_key_is_remembered_for_the_window_only() -> None:
    clock = Clock()
    window: Window[str] = Window(10.0, 100, clock)
    window.remember("a", "first")
    clock.now = 9.9
    assert window.get("a") == "first"
    clock.now = 10.0
    assert window.get("a") is None
    assert len(window) == 0


def test_memory_is_bounded_by_max_entries_oldest_first() -> None:
    clock = Clock()
    window: Window[int] = Window(60.0, 3, clock)
    for i in range(5):
        clock.now = float(i)
        window.remember(i, i)
    assert len(window) == 3
    assert [window.get(i) for i in range(5)] == [None, None, 2, 3, 4]
    # Remembering again renews a key: it is now the newest, so 3 goes first.
    window.remember(2, 2)
    window.remember(5, 5)
    assert [window.get(i) for i in (2, 3, 4, 5)] == [2, None, 4, 5]


def test_expired_keys_leave_even_when_nobody_asks_for_them() -> None:
    clock = Clock()
    window: Window[int] = Window(1.0, 1000, clock)
    for i in range(100):
        window.remember(i, i)
    clock.now = 5.0
    window.remember("new", 0)
    assert len(window) == 1


def test_dedupe_config_parses_per_source_and_at_ingest() -> None:
    raw = {
        "handlers": {"entry_points": False},
        "ingest": {"dedupe": {"window_s": 30}},
        "sources": [{"name": "in", "type": "rabbitmq", "queue": "q",
                     "dedupe": {"window_s": 5, "max_entries": 10}}],
    }  # fmt: skip
    config = parse_config(raw, {})
    assert config.ingest.dedupe == DedupeConfig(window_s=30.0, max_entries=100_000)
    assert config.sources[0].dedupe == DedupeConfig(window_s=5.0, max_entries=10)
    assert parse_config({"handlers": {"entry_points": False}}, {}).ingest.dedupe is None
    with pytest.raises(ConfigError, match=r"ingest\.dedupe\.window"):
        parse_config({"ingest": {"dedupe": {"window": "10m"}}}, {})
    with pytest.raises(ConfigError, match=r"max_entries"):
        parse_config({"ingest": {"dedupe": {"max_entries": 0}}}, {})


# --- sources ---------------------------------------------------------------


def dropped(bus: Bus, source: str = "in") -> float:
    return bus.metrics.dedupe_dropped.labels(source)._value.get()  # type: ignore[attr-defined,no-any-return]


def consumed(bus: Bus, outcome: str) -> float:
    return bus.metrics.consumed.labels("in", outcome)._value.get()  # type: ignore[attr-defined,no-any-return]


def make_runner(bus: Bus, **fields: Any) -> Runner:
    raw = {"name": "in", "type": "rabbitmq", "queue": "q", "route": False, **fields}
    return Runner(bus, msgspec.convert(raw, RabbitSourceConfig))


async def test_a_source_drops_an_event_it_handled_within_the_window(
    registry: HandlerRegistry,
) -> None:
    runs: list[str] = []
    bus = Bus(parse_config({"handlers": {"entry_points": False}}, {}), registry=registry,
              metrics=Metrics())  # fmt: skip
    bus.subscribe("order.*", lambda event, ctx: runs.append(event.id))
    runner = make_runner(bus, dedupe={"window_s": 60})
    async with bus:
        first = await runner.deliver(Incoming("m1", event=Event(type="order.a", id="e1",
                                                                source="shop")))  # fmt: skip
        again = await runner.deliver(
            Incoming("m1", event=Event(type="order.a", id="e1", source="shop"), redelivered=True)
        )
        other_source = await runner.deliver(
            Incoming("m2", event=Event(type="order.a", id="e1", source="till"))
        )
    assert (first, again, other_source) == (Verdict("ack"), Verdict("ack"), Verdict("ack"))
    assert runs == ["e1", "e1"]  # shop/e1 once, till/e1 once
    assert dropped(bus) == 1
    assert consumed(bus, "duplicate") == 1
    assert consumed(bus, "ok") == 2


async def test_a_failed_event_is_not_remembered(registry: HandlerRegistry) -> None:
    runs: list[int] = []

    def flaky(event: Event, ctx: Context) -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("first time")

    bus = Bus(parse_config({"handlers": {"entry_points": False}}, {}), registry=registry,
              metrics=Metrics())  # fmt: skip
    bus.subscribe("order.*", flaky, name="flaky")
    runner = make_runner(bus, dedupe={"window_s": 60})
    event = Event(type="order.a", id="e1", source="shop")
    async with bus:
        first = await runner.deliver(Incoming("m", event=event))
        second = await runner.deliver(Incoming("m", event=event, redelivered=True))
    assert first.action == "dead_letter"
    assert second == Verdict("ack")
    assert len(runs) == 2
    assert dropped(bus) == 0


async def test_without_a_window_every_redelivery_runs(registry: HandlerRegistry) -> None:
    runs: list[str] = []
    bus = Bus(parse_config({"handlers": {"entry_points": False}}, {}), registry=registry,
              metrics=Metrics())  # fmt: skip
    bus.subscribe("order.*", lambda event, ctx: runs.append(event.id))
    runner = make_runner(bus)
    async with bus:
        for _ in range(2):
            await runner.deliver(Incoming("m", event=Event(type="order.a", id="e1")))
    assert runs == ["e1", "e1"]


# --- the ingest ------------------------------------------------------------


async def test_ingest_answers_a_retry_with_the_first_result() -> None:
    count: list[int] = []
    runs: list[str] = []
    gate = asyncio.Event()

    async def run(event: Event) -> EmitResult:
        runs.append(event.id)
        await gate.wait()
        return EmitResult(event.id, event.type, "published")

    dedupe = IngestDedupe(DedupeConfig(), "evbridge://here", lambda: count.append(1))
    event = Event(type="t", id="e1")
    first = asyncio.ensure_future(dedupe.emit(event, run))
    await asyncio.sleep(0)
    # A retry while the first still runs waits for it.
    retry = asyncio.ensure_future(dedupe.emit(event, run))
    await asyncio.sleep(0)
    gate.set()
    assert (await first).duplicate is False
    assert await retry == EmitResult("e1", "t", "published", duplicate=True)
    later = await dedupe.emit(Event(type="t", id="e1", source="evbridge://here"), run)
    assert later.duplicate is True
    assert later.to_api()["duplicate"] is True
    assert "duplicate" not in (await first).to_api()
    assert runs == ["e1"]
    assert len(count) == 2


async def test_ingest_runs_again_after_a_retriable_rejection_or_a_raise() -> None:
    results = [
        EmitResult("e1", "t", "rejected", error=ErrorInfo("sink_unavailable", "away", None, True)),
        EmitResult("e1", "t", "published"),
    ]
    calls: list[int] = []

    async def run(event: Event) -> EmitResult:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("bus stopping")
        return results[len(calls) - 2]

    dedupe = IngestDedupe(DedupeConfig(), "s", lambda: None)
    event = Event(type="t", id="e1")
    with pytest.raises(RuntimeError):
        await dedupe.emit(event, run)
    assert (await dedupe.emit(event, run)).status == "rejected"
    assert (await dedupe.emit(event, run)).status == "published"
    assert (await dedupe.emit(event, run)).duplicate is True
    assert len(calls) == 3


async def test_ingest_keeps_a_slim_result() -> None:
    outcome = HandlerOutcome("h", "ok", None, 0.001)
    full = EmitResult(
        "e1", "t", "published", [outcome], follow_ups=[EmitResult("c", "u", "handled")]
    )

    async def run(event: Event) -> EmitResult:
        return full

    dedupe = IngestDedupe(DedupeConfig(), "s", lambda: None)
    assert await dedupe.emit(Event(type="t", id="e1"), run) is full
    again = await dedupe.emit(Event(type="t", id="e1"), run)
    assert again == EmitResult("e1", "t", "published", duplicate=True)


async def test_a_retry_waiting_on_a_retriable_rejection_runs_for_real() -> None:
    gate = asyncio.Event()
    calls: list[int] = []
    away = EmitResult(
        "e1", "t", "rejected", error=ErrorInfo("sink_unavailable", "away", None, True)
    )

    async def run(event: Event) -> EmitResult:
        calls.append(1)
        if len(calls) == 1:
            await gate.wait()
            return away
        return EmitResult("e1", "t", "published")

    dedupe = IngestDedupe(DedupeConfig(), "s", lambda: None)
    event = Event(type="t", id="e1")
    first = asyncio.ensure_future(dedupe.emit(event, run))
    await asyncio.sleep(0)
    retry = asyncio.ensure_future(dedupe.emit(event, run))
    await asyncio.sleep(0)
    gate.set()
    assert await first == away
    assert await retry == EmitResult("e1", "t", "published")
    assert len(calls) == 2


# --- the ingest's batches ----------------------------------------------------


def published(event: Event) -> EmitResult:
    outcome = HandlerOutcome("h", "ok", None, 0.001)
    return EmitResult(event.id, event.type, "published", [outcome])


async def test_a_batch_runs_only_its_new_items_once_and_answers_the_others_first_result() -> None:
    count: list[int] = []
    runs: list[list[str]] = []

    async def run_many(events: list[Event]) -> list[EmitResult]:
        runs.append([e.id for e in events])
        return [published(e) for e in events]

    async def run(event: Event) -> EmitResult:
        return published(event)

    dedupe = IngestDedupe(DedupeConfig(), "s", lambda: count.append(1))
    await dedupe.emit(Event(type="t", id="posted"), run)
    batch = [Event(type="t", id=i) for i in ("a", "posted", "b", "a")]
    results = await dedupe.emit_many(batch, run_many)
    assert runs == [["a", "b"]]  # one call, the new items in their order
    assert [r.id for r in results] == ["a", "posted", "b", "a"]
    assert [r.duplicate for r in results] == [False, True, False, True]
    assert results[0].handlers  # the first run's own result, whole
    # A repeat within the batch: its first item's result, without what only that run did.
    assert results[3] == EmitResult("a", "t", "published", duplicate=True)
    # A retry of the whole batch, and a single POST of one of its items: nothing runs.
    again = await dedupe.emit_many(batch, run_many)
    assert [r.duplicate for r in again] == [True] * 4
    assert (await dedupe.emit(Event(type="t", id="b"), run)).duplicate is True
    assert runs == [["a", "b"]]
    assert len(count) == 2 + 4 + 1


async def test_a_batch_item_waits_for_a_post_still_running_and_reruns_a_retriable_one() -> None:
    gate = asyncio.Event()
    away = EmitResult("x", "t", "rejected", error=ErrorInfo("sink_unavailable", "away", None, True))
    runs: list[list[str]] = []

    async def slow(event: Event) -> EmitResult:
        await gate.wait()
        return published(event) if event.id == "y" else away

    async def run_many(events: list[Event]) -> list[EmitResult]:
        runs.append([e.id for e in events])
        return [published(e) for e in events]

    dedupe = IngestDedupe(DedupeConfig(), "s", lambda: None)
    first_x = asyncio.ensure_future(dedupe.emit(Event(type="t", id="x"), slow))
    first_y = asyncio.ensure_future(dedupe.emit(Event(type="t", id="y"), slow))
    await asyncio.sleep(0)
    batch = asyncio.ensure_future(
        dedupe.emit_many([Event(type="t", id="x"), Event(type="t", id="y")], run_many)
    )
    await asyncio.sleep(0)
    assert not runs  # waiting for the first runs
    gate.set()
    assert await first_x == away
    assert (await first_y).duplicate is False
    x, y = await batch
    assert runs == [["x"]]  # x's first run may succeed if sent again: it runs for real
    assert (x.status, x.duplicate) == ("published", False)
    assert y == EmitResult("y", "t", "published", duplicate=True)


async def test_a_batch_that_raises_is_forgotten() -> None:
    calls: list[int] = []

    async def run_many(events: list[Event]) -> list[EmitResult]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("bus stopping")
        return [published(e) for e in events]

    dedupe = IngestDedupe(DedupeConfig(), "s", lambda: None)
    batch = [Event(type="t", id="a"), Event(type="t", id="b")]
    with pytest.raises(RuntimeError):
        await dedupe.emit_many(batch, run_many)
    assert [r.duplicate for r in await dedupe.emit_many(batch, run_many)] == [False, False]
    assert len(calls) == 2


async def test_two_batches_sharing_events_in_opposite_orders_both_finish() -> None:
    # Batch one claims a, then meets c (a POST still running); batch two claims b, then
    # meets a. Were running first runs awaited before a batch's own items ran, one would
    # then meet b and each batch would wait for the other for ever.
    posted = asyncio.Event()
    runs: list[list[str]] = []

    async def slow(event: Event) -> EmitResult:
        await posted.wait()
        return published(event)

    async def run_many(events: list[Event]) -> list[EmitResult]:
        runs.append([e.id for e in events])
        return [published(e) for e in events]

    dedupe = IngestDedupe(DedupeConfig(), "s", lambda: None)
    post = asyncio.ensure_future(dedupe.emit(Event(type="t", id="c"), slow))
    await asyncio.sleep(0)
    ids = (["a", "c", "b"], ["b", "a"])
    one, two = (
        asyncio.ensure_future(dedupe.emit_many([Event(type="t", id=i) for i in batch], run_many))
        for batch in ids
    )
    await asyncio.sleep(0)
    posted.set()
    first, second = await asyncio.wait_for(asyncio.gather(one, two), timeout=5)
    assert (await post).duplicate is False
    # Every event ran exactly once across both batches, and each batch answers its items.
    assert sorted(i for run in runs for i in run) == ["a", "b"]
    assert [r.id for r in first] == ids[0]
    assert [r.id for r in second] == ids[1]
    assert [r.duplicate for r in first + second].count(False) == 2
