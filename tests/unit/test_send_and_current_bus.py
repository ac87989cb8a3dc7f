"""``bus.send`` (fire and forget, failures logged and counted) and ``current_bus()``."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

import pytest

from bridge import Bus, Context, Event, current_bus, parse_config
from bridge.handlers import HandlerRegistry
from bridge.metrics import METRICS
from bridge.sinks.memory import MemorySink


def make_bus(registry: HandlerRegistry) -> Bus:
    raw: dict[str, Any] = {
        "sinks": [{"name": "mem", "type": "memory"}],
        "routes": [{"match": "*", "sink": "mem"}],
        "handlers": {"entry_points": False},
    }
    return Bus(parse_config(raw, {}), registry=registry)


def sent_errors(error_type: str) -> float:
    return (
        METRICS.registry.get_sample_value(
            "evbridge_errors_total", {"stage": "send", "error_type": error_type}
        )
        or 0.0
    )


async def test_send_returns_a_handle_and_stop_waits_for_it(registry: HandlerRegistry) -> None:
    release = asyncio.Event()

    async def slow(event: Event) -> None:
        await release.wait()

    bus = make_bus(registry)
    bus.subscribe("x", slow)
    await bus.start()
    handle = bus.send(Event(type="x"))
    other = bus.send(Event(type="x"))
    assert not handle.done()
    release.set()
    result = await handle
    assert result.status == "published"
    await bus.stop()  # waits for `other`, nobody awaited
    assert other.done()
    sink = bus.sinks["mem"]
    assert isinstance(sink, MemorySink)
    assert len(sink.events) == 2


async def test_a_failed_send_is_logged_and_counted_even_unawaited(
    registry: HandlerRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    bus = make_bus(registry)  # never started: a notification cannot be published
    before = sent_errors("BridgeError")
    handle = bus.send(Event(type="x"))
    await asyncio.wait([handle])
    assert sent_errors("BridgeError") == before + 1
    assert any(
        r.levelno == logging.ERROR and "bus.send(): the event failed" in r.getMessage()
        for r in caplog.records
    )
    assert handle.exception() is not None  # retrieved, so asyncio reports nothing more


async def test_current_bus_inside_handlers_and_async_with(registry: HandlerRegistry) -> None:
    seen: list[Bus] = []

    async def async_handler(event: Event, ctx: Context) -> None:
        seen.append(current_bus())

    def sync_handler(event: Event) -> None:
        seen.append(current_bus())  # a copy of the caller's context, in a handler thread

    bus = make_bus(registry)
    scope = bus.scope("tenant")
    bus.subscribe("x", async_handler)
    bus.subscribe("x", sync_handler)
    with pytest.raises(LookupError, match="no current bus"):
        current_bus()
    async with bus:
        assert current_bus() is bus
        await scope.emit(Event(type="x", kind="domain"))
        assert current_bus() is bus
    with pytest.raises(LookupError):
        current_bus()
    assert seen == [scope, scope]

    # Emitting outside any `async with` (as the server does) still sets it for handlers.
    seen.clear()
    await bus.start()
    await contextvars.copy_context().run(
        asyncio.ensure_future, bus.emit(Event(type="x", kind="domain"))
    )
    await bus.stop()
    assert seen == [bus, bus]
