"""The error policy: per handler and per emit ``continue``, ``stop`` and ``reject``, and
``raise_errors``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bridge import Bus, Context, Event, parse_config
from bridge.handlers import HandlerRegistry
from bridge.metrics import METRICS
from bridge.server.errors import status_for
from bridge.sinks.memory import MemorySink


class Retriable(Exception):
    retriable = True


def make_bus(registry: HandlerRegistry) -> Bus:
    raw: dict[str, Any] = {
        "sinks": [{"name": "mem", "type": "memory"}],
        "routes": [{"match": "*", "sink": "mem"}],
        "handlers": {"entry_points": False},
    }
    return Bus(parse_config(raw, {}), registry=registry)


def memory(bus: Bus) -> MemorySink:
    sink = bus.sinks["mem"]
    assert isinstance(sink, MemorySink)
    return sink


def chain(bus: Bus, calls: list[str], **policy: Any) -> None:
    async def first(event: Event, ctx: Context) -> None:
        calls.append("first")
        await ctx.emit(Event(type="follow", kind="domain"))

    async def failing(event: Event, ctx: Context) -> None:
        calls.append("failing")
        raise ValueError("no such group")

    async def last(event: Event, ctx: Context) -> None:
        calls.append("last")

    bus.subscribe("x", first, name="first")
    bus.subscribe("x", failing, name="failing", **policy)
    bus.subscribe("x", last, name="last")


async def test_continue_is_the_default(registry: HandlerRegistry) -> None:
    bus = make_bus(registry)
    calls: list[str] = []
    chain(bus, calls)
    async with bus:
        result = await bus.emit(Event(type="x"))
    assert calls == ["first", "failing", "last"]
    assert result.status == "published"
    assert [h.outcome for h in result.handlers] == ["ok", "error", "ok"]


async def test_stop_skips_the_rest_and_still_publishes(registry: HandlerRegistry) -> None:
    bus = make_bus(registry)
    calls: list[str] = []
    chain(bus, calls, on_error="stop")
    async with bus:
        result = await bus.emit(Event(type="x"))
    assert calls == ["first", "failing"]
    assert result.status == "published"
    assert [h.outcome for h in result.handlers] == ["ok", "error"]
    assert [f.type for f in result.follow_ups] == ["follow"]
    assert len(memory(bus).events) == 1


async def test_reject_publishes_nothing_and_names_the_handler(registry: HandlerRegistry) -> None:
    bus = make_bus(registry)
    calls: list[str] = []
    chain(bus, calls, on_error="reject")
    rejected = METRICS.events_rejected.labels("handler_failed")
    before = rejected._value.get()
    async with bus:
        result = await bus.emit(Event(type="x"))
    assert calls == ["first", "failing"]
    assert result.status == "rejected"
    assert result.error is not None
    assert result.error.code == "handler_failed"
    assert "handler failing failed (ValueError: no such group)" in result.error.message
    assert result.error.retriable is False
    assert status_for(result.error) == 422
    assert result.follow_ups == []  # dropped with the event
    assert memory(bus).events == []
    assert rejected._value.get() == before + 1


async def test_reject_of_a_retriable_error_or_a_timeout_is_retriable(
    registry: HandlerRegistry,
) -> None:
    async def busy(event: Event, ctx: Context) -> None:
        raise Retriable("database busy")

    async def slow(event: Event, ctx: Context) -> None:
        await asyncio.sleep(10)

    bus = make_bus(registry)
    bus.subscribe("busy", busy, on_error="reject")
    bus.subscribe("slow", slow, on_error="reject", timeout=0.05)
    async with bus:
        busy_result = await bus.emit(Event(type="busy"))
        slow_result = await bus.emit(Event(type="slow"))
    for result in (busy_result, slow_result):
        assert result.status == "rejected"
        assert result.error is not None
        assert result.error.retriable is True
        assert status_for(result.error) == 503
    assert memory(bus).events == []


async def test_reject_of_a_domain_event_is_rejected_too(registry: HandlerRegistry) -> None:
    async def failing(event: Event, ctx: Context) -> None:
        raise ValueError("nope")

    bus = make_bus(registry)
    bus.subscribe("x", failing, on_error="reject")
    async with bus:
        result = await bus.emit(Event(type="x", kind="domain"))
    assert result.status == "rejected"


async def test_the_emit_policy_applies_to_handlers_without_their_own(
    registry: HandlerRegistry,
) -> None:
    bus = make_bus(registry)
    calls: list[str] = []
    chain(bus, calls)
    async with bus:
        rejected = await bus.emit(Event(type="x"), on_error="reject")
        calls.clear()
        stopped = await bus.emit(Event(type="x"), on_error="stop")
        assert calls == ["first", "failing"]
        [many] = await bus.emit_many([Event(type="x")], on_error="reject")
    assert rejected.status == "rejected"
    assert stopped.status == "published"
    assert many.status == "rejected"


async def test_the_handlers_own_policy_wins_over_the_emits(registry: HandlerRegistry) -> None:
    bus = make_bus(registry)
    calls: list[str] = []
    chain(bus, calls, on_error="continue")
    async with bus:
        result = await bus.emit(Event(type="x"), on_error="reject")
    assert calls == ["first", "failing", "last"]
    assert result.status == "published"


async def test_raise_errors_raises_the_handlers_errors_after_the_chain_ran(
    registry: HandlerRegistry,
) -> None:
    async def slow(event: Event, ctx: Context) -> None:
        await asyncio.sleep(10)

    async def follow_fails(event: Event, ctx: Context) -> None:
        raise KeyError("in the follow-up")

    bus = make_bus(registry)
    calls: list[str] = []
    chain(bus, calls)
    bus.subscribe("x", slow, timeout=0.05, name="slow")
    bus.subscribe("follow", follow_fails)
    async with bus:
        with pytest.raises(ExceptionGroup) as info:
            await bus.emit(Event(type="x"), raise_errors=True)
        ok = await bus.emit(Event(type="y", kind="domain"), raise_errors=True)
    assert calls == ["first", "failing", "last"]
    assert len(memory(bus).events) == 1  # published before raising
    errors = info.value.exceptions
    assert [type(e) for e in errors] == [ValueError, TimeoutError, KeyError]
    assert "slow timed out after 0.05s" in str(errors[1])
    assert "3 handler errors on x" in str(info.value)
    assert ok.status == "handled"


def test_a_bad_policy_is_refused_naming_it(registry: HandlerRegistry) -> None:
    bus = make_bus(registry)

    async def h(event: Event, ctx: Context) -> None:
        pass

    with pytest.raises(ValueError, match=r"handler .*h: on_error must be one of"):
        bus.subscribe("x", h, on_error="ignore")  # type: ignore[arg-type]
