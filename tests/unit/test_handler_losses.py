"""Work a handler hands back must never be lost: returned coroutines, follow-ups from plain
``def`` handlers, and the caller's context variables in handler threads."""

from __future__ import annotations

import contextvars
import functools
import threading
from typing import Any

from bridge import Bus, Context, Event, parse_config
from bridge.handlers import HandlerRegistry
from tests.brokers import wait_until

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("test_request_id", default="-")


def make_bus(registry: HandlerRegistry) -> Bus:
    raw: dict[str, Any] = {
        "sinks": [{"name": "mem", "type": "memory"}],
        "routes": [{"match": "*", "sink": "mem"}],
        "handlers": {"entry_points": False},
    }
    return Bus(parse_config(raw, {}), registry=registry)


async def test_a_sync_callable_returning_a_coroutine_is_awaited(registry: HandlerRegistry) -> None:
    done: list[str] = []

    async def notify(event: Event, tag: str = "lambda") -> None:
        done.append(tag)

    async def failing(event: Event) -> None:
        raise ValueError("notify failed")

    bus = make_bus(registry)
    bus.subscribe("x", lambda e, c: notify(e), name="as-lambda", inline=True)
    bus.subscribe("x", lambda e, c: notify(e, "threaded"), name="threaded")
    bus.subscribe("x", functools.partial(lambda e, c, tag: notify(e, tag), tag="partial"))
    bus.subscribe("x", lambda e, c: failing(e), name="failing", inline=True)
    async with bus:
        result = await bus.emit(Event(type="x", kind="domain"))
    assert done == ["lambda", "threaded", "partial"]
    assert [h.outcome for h in result.handlers] == ["ok", "ok", "ok", "error"]
    assert result.handlers[3].error == "ValueError: notify failed"


async def test_ctx_emit_from_a_plain_def_handler_is_not_lost(registry: HandlerRegistry) -> None:
    threads: list[int] = []

    def sync_handler(event: Event, ctx: Context) -> None:
        threads.append(threading.get_ident())
        ctx.emit(Event(type="followed", kind="domain"))

    seen: list[str] = []

    async def follower(event: Event, ctx: Context) -> None:
        seen.append(event.type)

    bus = make_bus(registry)
    bus.subscribe("x", sync_handler, name="sync")
    bus.subscribe("followed", follower, name="follower")
    async with bus:
        result = await bus.emit(Event(type="x", kind="domain"))
    assert threads
    assert threads[0] != threading.get_ident()
    assert [h.outcome for h in result.handlers] == ["ok"]
    assert [f.type for f in result.follow_ups] == ["followed"]
    assert seen == ["followed"]


async def test_ctx_emit_is_still_awaitable_in_async_handlers(registry: HandlerRegistry) -> None:
    async def handler(event: Event, ctx: Context) -> None:
        await ctx.emit(Event(type="followed", kind="domain"))

    bus = make_bus(registry)
    bus.subscribe("x", handler)
    async with bus:
        result = await bus.emit(Event(type="x", kind="domain"))
    assert [f.type for f in result.follow_ups] == ["followed"]


async def test_plain_def_handlers_see_the_callers_context_variables(
    registry: HandlerRegistry,
) -> None:
    seen: list[str] = []

    def sync_handler(event: Event, ctx: Context) -> None:
        seen.append(REQUEST_ID.get())
        REQUEST_ID.set("changed-in-thread")  # a copy: the caller's value stays

    bus = make_bus(registry)
    bus.subscribe("x", sync_handler)
    async with bus:
        token = REQUEST_ID.set("req-1")
        try:
            await bus.emit(Event(type="x", kind="domain"))
            REQUEST_ID.set("req-2")
            await bus.emit(Event(type="x", kind="domain"))
            assert REQUEST_ID.get() == "req-2"
        finally:
            REQUEST_ID.reset(token)
    assert seen == ["req-1", "req-2"]


async def test_a_follow_up_after_the_chain_ended_is_refused_loudly(
    registry: HandlerRegistry, caplog: Any
) -> None:
    release = threading.Event()
    raised: list[BaseException] = []

    def slow(event: Event, ctx: Context) -> None:
        release.wait(5)
        try:
            ctx.emit(Event(type="late", kind="domain"))
        except RuntimeError as exc:
            raised.append(exc)

    bus = make_bus(registry)
    bus.subscribe("x", slow, timeout=0.05)
    async with bus:
        result = await bus.emit(Event(type="x", kind="domain"))
        assert [h.outcome for h in result.handlers] == ["timeout"]
        release.set()
        await wait_until(lambda: bool(raised), timeout=5, what="the late emit to raise")
    assert "after the handlers of 'x'" in str(raised[0])
    assert any("the follow-up is refused" in r.getMessage() for r in caplog.records)
    assert result.follow_ups == []
