from __future__ import annotations

import asyncio
import gc
import threading
from collections import deque
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import Bus, Context, Event, parse_config
from bridge.handlers import HandlerRegistry
from bridge.hub import Hub, SubscriberBudget
from bridge.metrics import METRICS, Metrics
from bridge.subscriptions import (
    OVERFLOW_POLICIES,
    Notice,
    Subscription,
    SubscriptionOverflow,
)


def make_bus(registry: HandlerRegistry, metrics: Metrics | None = None) -> Bus:
    raw: dict[str, Any] = {
        "sinks": [{"name": "mem", "type": "memory"}],
        "routes": [{"match": "order.*", "sink": "mem"}],
        "handlers": {"entry_points": False},
    }
    return Bus(parse_config(raw, {}), registry=registry, metrics=metrics)


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
    dropped = METRICS.subscription_dropped.child("max_queue").value
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
    assert METRICS.subscription_dropped.child("max_queue").value == dropped + 7


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


def subscription_series(metrics: Metrics) -> dict[str, float]:
    """Every subscription series of ``metrics`` as a scrape reads it (absent = 0)."""
    sample = metrics.registry.get_sample_value
    series = {
        "subscribers": sample("evbridge_subscribers"),
        "queued_bytes": sample("evbridge_subscription_queued_bytes"),
    }
    for bound in ("max_queue", "max_queue_bytes", "max_total_subscriber_bytes"):
        for name in ("dropped", "disconnected"):
            series[f"{name}/{bound}"] = sample(
                f"evbridge_subscription_{name}_total", {"bound": bound}
            )
    return {name: value or 0.0 for name, value in series.items()}


async def test_each_bus_counts_its_subscriptions_in_its_own_metrics(
    registry: HandlerRegistry,
) -> None:
    mine, yours = Metrics(), Metrics()
    default_before = subscription_series(METRICS)
    async with make_bus(registry, mine) as one, make_bus(registry, yours) as two:
        tenant = one.scope("tenant")  # a scope counts in its bus's metrics too
        async with (
            one.subscription("order.*", max_queue=2) as dropping,
            tenant.subscription("order.*", max_queue=1, overflow="disconnect"),
        ):
            await one.emit_many([Event(type="order.x") for _ in range(5)])
            await tenant.emit_many([Event(type="order.x") for _ in range(3)])
            await two.emit_many([Event(type="order.x") for _ in range(5)])
            counted = subscription_series(mine)
            assert counted["subscribers"] == 2
            assert counted["queued_bytes"] == one.subscriber_budget.used > 0
            assert counted["dropped/max_queue"] == dropping.dropped == 3
            assert counted["disconnected/max_queue"] == 1
            assert set(subscription_series(yours).values()) == {0.0}
        assert subscription_series(mine)["subscribers"] == 0
    assert set(subscription_series(yours).values()) == {0.0}
    assert subscription_series(METRICS) == default_before


def test_bad_arguments_are_refused(registry: HandlerRegistry) -> None:
    bus = make_bus(registry)
    with pytest.raises(ValueError, match="max_queue"):
        bus.subscription("*", max_queue=0)
    with pytest.raises(ValueError, match="overflow"):
        bus.subscription("*", overflow="block")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pattern"):
        bus.subscription()


# --- bounds in bytes -----------------------------------------------------------------


def big(i: int, size: int = 10_000, type_: str = "order.x") -> Event:
    return Event(type=type_, data={"i": i, "pad": "p" * size}, kind="domain", source="test")


def byte_bus(registry: HandlerRegistry, per: int, total: int) -> Bus:
    raw: dict[str, Any] = {
        "sinks": [{"name": "mem", "type": "memory"}],
        "routes": [{"match": "order.*", "sink": "mem"}],
        "handlers": {"entry_points": False},
        "limits": {"max_subscriber_bytes": per, "max_total_subscriber_bytes": total},
    }
    return Bus(parse_config(raw, {}), registry=registry)


async def test_a_queue_is_bounded_in_bytes_and_drops_its_oldest(
    registry: HandlerRegistry,
) -> None:
    from bridge.memory import event_cost

    cost = event_cost(big(10))  # the cost of each of the last ten (two-digit "i")
    dropped = METRICS.subscription_dropped.child("max_queue_bytes").value
    async with (
        byte_bus(registry, per=10 * cost, total=1000 * cost) as bus,
        bus.subscription("order.*", max_queue=100_000) as slow,
    ):
        assert slow.max_bytes == 10 * cost  # limits.max_subscriber_bytes is the default
        for i in range(50):
            await bus.emit(big(i))
            assert slow.queued_bytes <= slow.max_bytes
        got = await drain(slow, 10)
        assert slow.queued_bytes == 0
        assert bus.subscriber_budget.used == 0
    assert [n.event.data["i"] for n in got] == list(range(40, 50))
    assert got[0].dropped == 40
    assert METRICS.subscription_dropped.child("max_queue_bytes").value == dropped + 40


async def test_an_event_larger_than_the_queue_is_dropped_alone(
    registry: HandlerRegistry,
) -> None:
    async with (
        byte_bus(registry, per=100_000, total=1_000_000) as bus,
        bus.subscription("order.*", max_queue_bytes=50_000) as sub,
    ):
        await bus.emit(big(0))
        await bus.emit(big(1, size=60_000))
        await bus.emit(big(2))
        got = await drain(sub, 2)
    assert [(n.event.data["i"], n.dropped) for n in got] == [(0, 0), (2, 1)]


async def test_the_disconnect_policy_applies_to_the_byte_bound(
    registry: HandlerRegistry,
) -> None:
    disconnected = METRICS.subscription_disconnected.child("max_queue_bytes").value
    async with (
        byte_bus(registry, per=25_000, total=1_000_000) as bus,
        bus.subscription("order.*", overflow="disconnect") as sub,
    ):
        for i in range(5):
            await bus.emit(big(i))
        got = [await sub.__anext__(), await sub.__anext__()]
        with pytest.raises(SubscriptionOverflow, match="bytes behind"):
            await sub.__anext__()
    assert [n.event.data["i"] for n in got] == [0, 1]
    assert METRICS.subscription_disconnected.child("max_queue_bytes").value == disconnected + 1


async def test_all_subscribers_share_one_bound_and_the_furthest_behind_pays(
    registry: HandlerRegistry,
) -> None:
    """Scopes included. The stalled subscribers lose their oldest events; one that
    keeps up loses nothing although the shared bound is full whenever it gets an event."""
    from bridge.memory import event_cost

    cost = event_cost(big(1000))
    total = 12 * cost
    dropped = METRICS.subscription_dropped.child("max_total_subscriber_bytes").value
    async with byte_bus(registry, per=10 * cost, total=total) as bus:
        tenant = bus.scope("tenant")
        async with (
            bus.subscription("order.*") as stalled_a,
            tenant.subscription("order.*") as stalled_b,
            bus.subscription("order.*") as reader,
        ):
            for i in range(40):
                await bus.emit(big(i))
                await tenant.emit(big(1000 + i))
                assert bus.subscriber_budget.used <= total
                while (notice := reader.get_nowait()) is not None:
                    assert notice.dropped == 0
            assert stalled_a.dropped + stalled_b.dropped >= 80 - 12
            assert reader.dropped == 0
            queued = stalled_a.queued_bytes + stalled_b.queued_bytes + reader.queued_bytes
            assert bus.subscriber_budget.used == queued
            # Both stalled ones hold about half the bound: neither starves the other.
            assert abs(stalled_a.queued_bytes - stalled_b.queued_bytes) < 2 * cost
        assert bus.subscriber_budget.used == 0
    assert METRICS.subscription_dropped.child("max_total_subscriber_bytes").value >= (
        dropped + 80 - 12
    )


def test_a_byte_bound_below_one_is_refused(registry: HandlerRegistry) -> None:
    with pytest.raises(ValueError, match="max_queue_bytes"):
        make_bus(registry).subscription("*", max_queue_bytes=0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),  # subscriber
            st.sampled_from(["offer", "read", "read", "close"]),
            st.integers(1, 5000),  # cost of an offered event
        ),
        max_size=120,
    ),
    st.sampled_from(OVERFLOW_POLICIES),
)
def test_byte_accounting_invariants(ops: list[tuple[int, str, int]], overflow: Any) -> None:
    """Whatever is offered, read and closed: the shared budget is the sum of the queues,
    never above its limit; no queue is above its bound; every event offered to a
    subscriber is either read or reported as dropped (drop_oldest)."""
    budget = SubscriberBudget(limit=8000, queue_bytes=5000)
    hub = Hub(Metrics(), budget)
    subs = [Subscription(hub, ["*"], max_queue=4, overflow=overflow) for _ in range(3)]
    for sub in subs:
        hub.add(sub)
    offered = [0] * 3
    seen = [0] * 3
    event = Event(type="t")
    for who, op, cost in ops:
        sub = subs[who]
        if op == "offer":
            if not (sub.closed or sub.overflowed):
                offered[who] += 1
            sub.offer(event, "handled", cost)
        elif op == "read":
            notice = sub.get_nowait()
            if notice is not None:
                seen[who] += 1 + notice.dropped
        else:
            sub.close()
        assert budget.used == sum(s.queued_bytes for s in subs) <= budget.limit
        assert all(s.queued_bytes <= s.max_bytes for s in subs)
        assert all(len(s._queue) <= 4 for s in subs)
    for who, sub in enumerate(subs):
        if sub.closed or overflow == "disconnect":
            continue
        while (notice := sub.get_nowait()) is not None:
            seen[who] += 1 + notice.dropped
        # Drops after the last read show up only at the next read: count them here.
        assert seen[who] + (sub._seq - sub._read_seq) == offered[who]
    for sub in subs:
        sub.close()
    assert budget.used == 0
    assert budget.members == []


async def test_an_event_too_big_for_a_full_queue_costs_only_itself(
    registry: HandlerRegistry,
) -> None:
    async with (
        byte_bus(registry, per=100_000, total=1_000_000) as bus,
        bus.subscription("order.*", max_queue=2, max_queue_bytes=50_000) as sub,
    ):
        await bus.emit(big(0))
        await bus.emit(big(1))
        await bus.emit(big(2, size=60_000))  # never fits: the two queued stay
        got = await drain(sub, 2)
        await bus.emit(big(3))
        got += await drain(sub, 1)
    assert [(n.event.data["i"], n.dropped) for n in got] == [(0, 0), (1, 0), (3, 1)]


async def test_a_subscription_is_live_from_the_line_that_makes_it(
    registry: HandlerRegistry,
) -> None:
    """haiway's request/response pattern: subscribe, send the request, then read."""
    async with make_bus(registry) as bus:
        sub = bus.subscription("order.*")
        await bus.emit(Event(type="order.created", data=1))  # before async with / async for
        async with sub:
            notice = await sub.next(timeout=1)
    assert notice is not None
    assert notice.event.data == 1


async def test_an_unclosed_subscription_is_freed_when_collected(
    registry: HandlerRegistry,
) -> None:
    async with make_bus(registry) as bus:
        before = METRICS.subscribers._value.get()
        sub = bus.subscription("order.*")
        await bus.emit(Event(type="order.created", data="x" * 1000))
        assert bus.subscriber_budget.used > 0
        assert METRICS.subscribers._value.get() == before + 1
        del sub
        gc.collect()
        assert bus._hub.subscriptions == []
        assert bus.subscriber_budget.members == []
        assert bus.subscriber_budget.used == 0
        assert METRICS.subscribers._value.get() == before
        await bus.emit(Event(type="order.created"))  # nothing left to offer it to


async def test_a_subscription_collected_in_another_thread_is_freed_on_the_loop(
    registry: HandlerRegistry,
) -> None:
    async with make_bus(registry) as bus:
        before = METRICS.subscribers._value.get()
        holder = [bus.subscription("order.*")]
        await bus.emit(Event(type="order.created", data="x" * 1000))
        assert bus.subscriber_budget.used > 0
        # The last reference dropped in a thread (as a collector run there would).
        thread = threading.Thread(target=holder.clear)
        thread.start()
        thread.join()
        assert len(bus._hub.graveyard) == 1
        await bus.emit(Event(type="order.created"))  # the loop frees it on the next publish
        assert bus._hub.graveyard == deque()
        assert bus._hub.subscriptions == []
        assert bus.subscriber_budget.used == 0
        assert METRICS.subscribers._value.get() == before
