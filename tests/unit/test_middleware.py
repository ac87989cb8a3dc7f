"""Middleware around every handler call (``bus.use`` and ``handlers.middleware``), and the
rate-limited log of unhandled event types."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bridge import Bus, ConfigError, Context, Depends, Event, parse_config
from bridge.handlers import Handler, HandlerRegistry

CALLS: list[str] = []


async def from_config(
    call: Callable[[], Awaitable[Any]], handler: Handler, event: Event, ctx: Context
) -> Any:
    CALLS.append(f"config {handler.name}")
    return await call()


def not_async(call: Any, handler: Any, event: Any, ctx: Any) -> None:
    pass


def make_bus(registry: HandlerRegistry, **handlers: Any) -> Bus:
    raw: dict[str, Any] = {
        "sinks": [{"name": "mem", "type": "memory"}],
        "routes": [{"match": "*", "sink": "mem"}],
        "handlers": {"entry_points": False, **handlers},
    }
    return Bus(parse_config(raw, {}), registry=registry)


def tagging(tag: str, log: list[str]) -> Any:
    async def mw(
        call: Callable[[], Awaitable[Any]], handler: Handler, event: Event, ctx: Any
    ) -> Any:
        log.append(f"{tag} before {handler.name}")
        try:
            return await call()
        finally:
            log.append(f"{tag} after {handler.name}")

    return mw


async def test_middleware_wraps_every_handler_in_the_order_added(
    registry: HandlerRegistry,
) -> None:
    log: list[str] = []

    async def plain(event: Event, ctx: Context) -> None:
        log.append("plain")

    def threaded(event: Event) -> None:
        log.append("threaded")

    async def injected(value: int = Depends(lambda: 1)) -> None:
        log.append(f"injected {value}")

    bus = make_bus(registry)
    bus.subscribe("x", plain, name="plain")
    bus.subscribe("x", threaded, name="threaded")
    bus.subscribe("x", injected, name="injected")
    bus.use(tagging("outer", log))
    bus.use(tagging("inner", log))
    async with bus:
        result = await bus.emit(Event(type="x", kind="domain"))
    assert [h.outcome for h in result.handlers] == ["ok", "ok", "ok"]
    expected = []
    for name, body in (("plain", "plain"), ("threaded", "threaded"), ("injected", "injected 1")):
        expected += [f"outer before {name}", f"inner before {name}", body]
        expected += [f"inner after {name}", f"outer after {name}"]
    assert log == expected


async def test_a_middleware_error_is_the_handlers_error_under_its_policy(
    registry: HandlerRegistry,
) -> None:
    ran: list[str] = []

    async def handler(event: Event) -> None:
        ran.append("handler")

    async def refusing(call: Any, handler: Handler, event: Event, ctx: Any) -> None:
        if event.type == "refused":
            raise PermissionError("not in a transaction")
        await call()

    bus = make_bus(registry)
    bus.subscribe("*", handler, name="h", on_error="reject")
    bus.use(refusing)
    async with bus:
        refused = await bus.emit(Event(type="refused"))
        fine = await bus.emit(Event(type="fine"))
    assert [(h.outcome, h.error) for h in refused.handlers] == [
        ("error", "PermissionError: not in a transaction")
    ]
    assert refused.status == "rejected"
    assert fine.status == "published"
    assert ran == ["handler"]


async def test_a_middleware_may_retry_or_skip_the_call(registry: HandlerRegistry) -> None:
    attempts: list[int] = []

    async def flaky(event: Event) -> None:
        attempts.append(len(attempts))
        if len(attempts) < 3:
            raise ConnectionError("try again")

    async def retry(call: Any, handler: Handler, event: Event, ctx: Any) -> Any:
        for _ in range(4):
            try:
                return await call()
            except ConnectionError:
                continue
        raise AssertionError("unreachable in this test")

    bus = make_bus(registry)
    bus.subscribe("x", flaky)
    bus.use(retry)
    async with bus:
        result = await bus.emit(Event(type="x", kind="domain"))
    assert [h.outcome for h in result.handlers] == ["ok"]
    assert attempts == [0, 1, 2]


async def test_middleware_from_config_and_bad_entries_name_the_field(
    registry: HandlerRegistry,
) -> None:
    CALLS.clear()

    async def handler(event: Event) -> None:
        pass

    bus = make_bus(registry, middleware=["tests.unit.test_middleware:from_config"])
    bus.subscribe("x", handler, name="h")
    async with bus:
        await bus.emit(Event(type="x", kind="domain"))
    assert CALLS == ["config h"]

    for entry, message in [
        ("no_colon", "is not module:callable"),
        ("tests.unit.nowhere:mw", "ModuleNotFoundError"),
        ("tests.unit.test_middleware:missing", "AttributeError"),
        ("tests.unit.test_middleware:not_async", "must be an async callable"),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            make_bus(registry, middleware=["tests.unit.test_middleware:from_config", entry])
        assert info.value.field == "handlers.middleware[1]"


def test_use_refuses_a_sync_middleware(registry: HandlerRegistry) -> None:
    bus = make_bus(registry)
    with pytest.raises(TypeError, match="middleware not_async must be an async callable"):
        bus.use(not_async)


async def test_unhandled_types_are_logged_once_per_type(
    registry: HandlerRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    bus = make_bus(registry)
    caplog.set_level(logging.INFO, logger="bridge.bus")
    async with bus:
        for _ in range(3):
            await bus.emit(Event(type="nobody.home", kind="domain"))
        await bus.emit(Event(type="nobody.else", kind="domain"))
    lines = [r.getMessage() for r in caplog.records if "no handler for events" in r.getMessage()]
    assert len(lines) == 2
    assert "nobody.home" in lines[0]
    assert "nobody.else" in lines[1]
    assert all(r.levelno == logging.INFO for r in caplog.records if "no handler" in r.getMessage())
