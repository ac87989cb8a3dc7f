"""Dependency injection: ``Depends`` on sync/async functions and generators, nested, cached
per event, cleaned up after the handlers, and ``None`` skipping a handler."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from bridge import Bus, Context, Depends, Event, parse_config
from bridge.handlers import HandlerRegistry


def make_bus(registry: HandlerRegistry) -> Bus:
    raw: dict[str, Any] = {
        "sinks": [{"name": "mem", "type": "memory"}],
        "routes": [{"match": "*", "sink": "mem"}],
        "handlers": {"entry_points": False},
    }
    return Bus(parse_config(raw, {}), registry=registry)


async def test_sync_async_and_nested_dependencies_resolve_once_per_event(
    registry: HandlerRegistry,
) -> None:
    calls: list[str] = []

    def settings(event: Event) -> dict[str, str]:
        calls.append("settings")
        return {"dsn": f"db-for-{event.type}"}

    async def database(config: dict[str, str] = Depends(settings)) -> str:
        calls.append("database")
        return config["dsn"]

    def fresh() -> object:
        calls.append("fresh")
        return object()

    seen: list[tuple[str, Any]] = []

    async def first(event: Event, db: str = Depends(database), f: object = Depends(fresh)) -> None:
        seen.append(("first", db))

    def second(ctx: Context, db: str = Depends(database)) -> None:  # runs in a handler thread
        seen.append(("second", (db, threading.current_thread().name.startswith("evbridge"))))

    async def third(f: object = Depends(fresh, use_cache=False)) -> None:
        seen.append(("third", f))

    bus = make_bus(registry)
    bus.subscribe("x", first)
    bus.subscribe("x", second)
    bus.subscribe("x", third)
    async with bus:
        result = await bus.emit(Event(type="x", kind="domain"))
        assert [h.outcome for h in result.handlers] == ["ok", "ok", "ok"]
        assert calls == ["settings", "database", "fresh", "fresh"]  # uncached: twice
        await bus.emit(Event(type="x", kind="domain"))
    assert calls[4:] == ["settings", "database", "fresh", "fresh"]  # per event, not forever
    assert seen[0] == ("first", "db-for-x")
    assert seen[1] == ("second", ("db-for-x", True))


async def test_generator_dependencies_clean_up_after_the_handlers_even_when_they_raised(
    registry: HandlerRegistry,
) -> None:
    log: list[str] = []

    def connection() -> Iterator[str]:
        log.append("open sync")
        yield "conn"
        log.append("close sync")

    async def session(conn: str = Depends(connection)) -> AsyncIterator[str]:
        log.append("open async")
        try:
            yield f"session on {conn}"
        finally:
            log.append("close async")

    async def failing(event: Event, s: str = Depends(session)) -> None:
        log.append(f"handler with {s}")
        raise RuntimeError("handler failed")

    async def after(s: str = Depends(session)) -> None:
        log.append("second handler, same session")

    bus = make_bus(registry)
    bus.subscribe("x", failing)
    bus.subscribe("x", after)
    async with bus:
        result = await bus.emit(Event(type="x", kind="domain"))
    assert [h.outcome for h in result.handlers] == ["error", "ok"]
    assert log == [
        "open sync",
        "open async",
        "handler with session on conn",
        "second handler, same session",
        "close async",
        "close sync",
    ]


async def test_none_for_a_non_optional_parameter_skips_the_handler(
    registry: HandlerRegistry,
) -> None:
    ran: list[str] = []

    def current_user(event: Event) -> str | None:
        return event.data.get("user") if isinstance(event.data, dict) else None

    async def needs_user(user: str = Depends(current_user)) -> None:
        ran.append(f"needs {user}")

    async def optional_user(user: str | None = Depends(current_user)) -> None:
        ran.append(f"optional {user}")

    bus = make_bus(registry)
    bus.subscribe("x", needs_user, name="needs_user")
    bus.subscribe("x", optional_user, name="optional_user")
    async with bus:
        anonymous = await bus.emit(Event(type="x", kind="domain", data={}))
        known = await bus.emit(Event(type="x", kind="domain", data={"user": "ann"}))
    assert [h.outcome for h in anonymous.handlers] == ["skipped", "ok"]
    assert anonymous.handlers[0].error is not None
    assert "current_user gave None for 'user', which is not Optional" in anonymous.handlers[0].error
    assert [h.outcome for h in known.handlers] == ["ok", "ok"]
    assert ran == ["optional None", "needs ann", "optional ann"]


async def test_a_failing_factory_is_the_handlers_error(registry: HandlerRegistry) -> None:
    async def broken() -> str:
        raise ConnectionError("database down")

    async def handler(db: str = Depends(broken)) -> None:
        raise AssertionError("never called")

    bus = make_bus(registry)
    bus.subscribe("x", handler)
    async with bus:
        result = await bus.emit(Event(type="x", kind="domain"))
    assert [(h.outcome, h.error) for h in result.handlers] == [
        ("error", "ConnectionError: database down")
    ]


async def test_an_uncached_generator_is_cleaned_up_right_after_its_handler(
    registry: HandlerRegistry,
) -> None:
    log: list[str] = []

    def transaction() -> Iterator[str]:
        log.append("begin")
        try:
            yield "tx"
        finally:
            log.append("end")

    async def first(tx: str = Depends(transaction, use_cache=False)) -> None:
        log.append("first")
        raise ValueError("rolled back")

    def second(tx: str = Depends(transaction, use_cache=False)) -> None:  # in a thread
        log.append("second")

    bus = make_bus(registry)
    bus.subscribe("x", first)
    bus.subscribe("x", second)
    async with bus:
        result = await bus.emit(Event(type="x", kind="domain"))
    assert [h.outcome for h in result.handlers] == ["error", "ok"]
    assert log == ["begin", "first", "end", "begin", "second", "end"]
