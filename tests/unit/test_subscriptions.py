from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from bridge import Bus, Context, Event, parse_config
from bridge.handlers import HandlerRegistry
from bridge.metrics import METRICS
from bridge.subscriptions import Notice, SubscriptionOverflow


def make_bus(registry: HandlerRegistry) -> Bus:
    raw: dict[str, Any] = {
        "sinks": [{"name": "mem", "type": "memory"}],
        "routes": [{"match": "order.*", "sink": "mem"}],
        "handlers": {"entry_points": False},
    }
    return Bus(parse_config(raw, {}), registry=registry)


async def drain(events: Any, n: int) -> list[Notice]:
    out: list[Notice] = []
    async with asyncio.timeout(5):
        async for notice in events:
            out.append(notice)
            if len(out) == n:
                break
    return out


async def test_only_events_after_subscribing_in_order_with_status(
    registry: HandlerRegistry,
) -> None:
    async with make_bus(registry) as bus:
        await bus.emit(Event(type="order.before"))
        async with bus.subscription("order.*", "audit.*") as events:
            await bus.emit(Event(type="order.a"))
            await bus.emit(Event(type="other.x", kind="domain"))
            await bus.emit(Event(type="audit.z", kind="domain"))
            await bus.emit_many([Event(type="order.b"), Event(type="order.c")])
            await bus.emit(Event(type="audit.nowhere"))
            got = await drain(events, 5)
    assert [(n.event.type, n.status) for n in got] == [
        ("order.a", "published"),
        ("audit.z", "handled"),
        ("order.b", "published"),
        ("order.c", "published"),
        ("audit.nowhere", "rejected"),
    ]
    assert all(n.dropped == 0 for n in got)


async def test_subscribers_see_events_after_handlers_and_follow_ups_after_parents(
    registry: HandlerRegistry,
) -> None:
    bus = make_bus(registry)
    handled: list[str] = []

    async def handler(event: Event, ctx: Context) -> None:
        handled.append(event.type)
        if event.type == "order.parent":
            await ctx.emit(Event(type="order.child"))

    bus.subscribe("order.*", handler)
    async with bus, bus.subscription("*") as events:
        await bus.emit(Event(type="order.parent"))
        got = await drain(events, 2)
    assert [n.event.type for n in got] == ["order.parent", "order.child"]
    assert handled == ["order.parent", "order.child"]


async def test_independent_subscribers_and_drop_oldest_gap_marker(
    registry: HandlerRegistry,
) -> None:
    dropped = METRICS.subscription_dropped.child().value
    async with (
        make_bus(registry) as bus,
        bus.subscription("order.*", max_queue=3) as slow,
        bus.subscription("order.*") as fast,
    ):
        await bus.emit_many([Event(type="order.x", data={"i": i}) for i in range(10)])
        fast_got = await drain(fast, 10)
        slow_got = await drain(slow, 3)
        assert slow.dropped == 7
    assert [n.event.data["i"] for n in fast_got] == list(range(10))
    assert [n.event.data["i"] for n in slow_got] == [7, 8, 9]
    assert slow_got[0].dropped == 7
    assert [n.dropped for n in slow_got[1:]] == [0, 0]
    assert METRICS.subscription_dropped.child().value == dropped + 7


async def test_disconnect_policy_ends_the_stream_after_what_was_queued(
    registry: HandlerRegistry,
) -> None:
    async with (
        make_bus(registry) as bus,
        bus.subscription("order.*", max_queue=2, overflow="disconnect") as sub,
    ):
        await bus.emit_many([Event(type="order.x", data={"i": i}) for i in range(5)])
        got = [await sub.__anext__(), await sub.__anext__()]
        with pytest.raises(SubscriptionOverflow):
            await sub.__anext__()
    assert [n.event.data["i"] for n in got] == [0, 1]


async def test_a_stalled_subscriber_does_not_block_the_publisher(registry: HandlerRegistry) -> None:
    async with make_bus(registry) as bus, bus.subscription("order.*", max_queue=10):
        # Nobody reads: emitting many more than max_queue must still complete.
        async with asyncio.timeout(5):
            results = await bus.emit_many([Event(type="order.x") for _ in range(500)])
    assert all(r.status == "published" for r in results)


async def test_scopes_isolate_streams_unless_shared(registry: HandlerRegistry) -> None:
    async with make_bus(registry) as bus:
        tenant = bus.scope("tenant-a")
        shared = bus.scope("audit", shared=True)
        async with (
            bus.subscription("*") as root_events,
            tenant.subscription("*") as tenant_events,
            shared.subscription("*") as shared_events,
        ):
            await tenant.emit(Event(type="order.tenant"))
            await bus.emit(Event(type="order.root"))
            await shared.emit(Event(type="order.shared"))
            tenant_got = await drain(tenant_events, 1)
            root_got = await drain(root_events, 2)
            shared_got = await drain(shared_events, 2)
            assert tenant_events.get_nowait() is None
            assert tenant.started  # scopes share the parent's lifecycle
    assert [n.event.type for n in tenant_got] == ["order.tenant"]
    assert [n.event.type for n in root_got] == ["order.root", "order.shared"]
    assert [n.event.type for n in shared_got] == ["order.root", "order.shared"]
    assert not tenant.started


async def test_leaving_frees_everything_over_many_cycles(registry: HandlerRegistry) -> None:
    subscribers = METRICS.subscribers._value.get()
    async with make_bus(registry) as bus:
        tasks_before = len(asyncio.all_tasks())
        gc.collect()
        for i in range(10_000):
            async with bus.subscription("order.*") as events:
                if i % 1000 == 0:
                    await bus.emit(Event(type="order.x"))
                    assert (await drain(events, 1))[0].event.type == "order.x"
        del events
        gc.collect()
        assert bus._hub.subscriptions == []
        assert len(asyncio.all_tasks()) == tasks_before
        assert METRICS.subscribers._value.get() == subscribers
    live = [o for o in gc.get_objects() if type(o).__name__ == "Subscription"]
    assert live == []


async def test_breaking_out_of_the_loop_inside_async_with_frees_it(
    registry: HandlerRegistry,
) -> None:
    async with make_bus(registry) as bus:
        async with bus.subscription("order.*") as events:
            await bus.emit(Event(type="order.a"))
            async for _ in events:
                break
        assert bus._hub.subscriptions == []
        assert events.closed


def test_bad_arguments_are_refused(registry: HandlerRegistry) -> None:
    bus = make_bus(registry)
    with pytest.raises(ValueError, match="max_queue"):
        bus.subscription("*", max_queue=0)
    with pytest.raises(ValueError, match="overflow"):
        bus.subscription("*", overflow="block")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pattern"):
        bus.subscription()
