from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bridge import Bus, Context, Event, MaxDepthExceeded, Skip, StopChain, parse_config
from bridge.cancelguard import ABANDONED
from bridge.errors import BridgeError, ConfigError
from bridge.handlers import HandlerRegistry
from bridge.metrics import METRICS
from bridge.sinks.memory import MemorySink
from tests.brokers import wait_until


def make_bus(registry: HandlerRegistry, **extra: Any) -> Bus:
    raw: dict[str, Any] = {
        "sinks": [{"name": "mem", "type": "memory"}],
        "routes": [
            {"name": "keyed", "match": "keyed.*", "sink": "mem", "key": "{data.user}"},
            {"name": "orders", "match": "order.*", "sink": "mem", "topic": "orders.{type}"},
        ],
        "handlers": {"entry_points": False, **extra.pop("handlers", {})},
        **extra,
    }
    return Bus(parse_config(raw, {}), registry=registry)


def memory(bus: Bus) -> MemorySink:
    sink = bus.sinks["mem"]
    assert isinstance(sink, MemorySink)
    return sink


async def test_handlers_run_by_priority_then_registration(registry: HandlerRegistry) -> None:
    calls: list[str] = []
    bus = make_bus(registry)

    def recorder(tag: str) -> Any:
        async def handler(event: Event, ctx: Context) -> None:
            calls.append(tag)

        return handler

    bus.subscribe("order.*", recorder("low-first"), priority=0, name="low-first")
    bus.subscribe("order.created", recorder("high"), priority=10, name="high")
    bus.subscribe("*", recorder("low-second"), priority=0, name="low-second")
    bus.subscribe("other", recorder("never"), name="never")
    async with bus:
        result = await bus.emit(Event(type="order.created"))
    assert calls == ["high", "low-first", "low-second"]
    assert [h.name for h in result.handlers] == ["high", "low-first", "low-second"]
    assert result.status == "published"
    assert result.deliveries[0].destination == "orders.order.created"


async def test_handlers_of_one_event_never_overlap(registry: HandlerRegistry) -> None:
    running = 0
    peak = 0
    bus = make_bus(registry)

    async def handler(event: Event, ctx: Context) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        running -= 1

    for i in range(5):
        bus.subscribe("order.x", handler, name=f"h{i}")
    async with bus:
        await bus.emit(Event(type="order.x"))
    assert peak == 1


async def test_failure_is_isolated_recorded_and_counted(
    registry: HandlerRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    bus = make_bus(registry)
    after: list[str] = []

    async def boom(event: Event, ctx: Context) -> None:
        raise ValueError("bad input")

    async def later(event: Event, ctx: Context) -> None:
        after.append(event.id)

    bus.subscribe("order.x", boom, priority=1, name="t.boom")
    bus.subscribe("order.x", later, name="t.later")
    before = METRICS.handler_runs.child("t.boom", "error").value
    async with bus:
        result = await bus.emit(Event(type="order.x"))
    assert [(h.name, h.outcome) for h in result.handlers] == [
        ("t.boom", "error"),
        ("t.later", "ok"),
    ]
    assert result.handlers[0].error == "ValueError: bad input"
    assert after == [result.id]
    assert result.status == "published"
    assert METRICS.handler_runs.child("t.boom", "error").value == before + 1
    logged = [r for r in caplog.records if "t.boom failed" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is not None


async def test_timeout_becomes_an_outcome_and_the_chain_goes_on(registry: HandlerRegistry) -> None:
    bus = make_bus(registry, handlers={"timeout_s": 5})

    async def hang(event: Event, ctx: Context) -> None:
        await asyncio.Event().wait()

    async def stubborn(event: Event, ctx: Context) -> None:
        # Swallows the cancellation: must still be recorded as a timeout.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()

    async def ok(event: Event, ctx: Context) -> None:
        return None

    bus.subscribe("order.x", hang, priority=3, timeout=0.05, name="hang")
    bus.subscribe("order.x", stubborn, priority=2, timeout=0.05, name="stubborn")
    bus.subscribe("order.x", ok, priority=1, name="ok")
    async with bus:
        started = time.perf_counter()
        result = await bus.emit(Event(type="order.x"))
        elapsed = time.perf_counter() - started
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0
    assert [h.outcome for h in result.handlers] == ["timeout", "timeout", "ok"]
    assert result.handlers[0].error == "timed out after 0.05s"
    assert elapsed < 2.0


async def test_outside_cancellation_is_never_swallowed(registry: HandlerRegistry) -> None:
    bus = make_bus(registry)
    entered = asyncio.Event()

    async def hang(event: Event, ctx: Context) -> None:
        entered.set()
        await asyncio.Event().wait()

    bus.subscribe("order.x", hang)
    async with bus:
        task = asyncio.create_task(bus.emit(Event(type="order.x")))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_caller_cancellation_caught_by_a_handler_still_cancels(
    registry: HandlerRegistry,
) -> None:
    bus = make_bus(registry)  # handlers.cancel_grace_s: 1 s
    entered = asyncio.Event()
    release = asyncio.Event()
    later: list[str] = []

    async def returns(event: Event, ctx: Context) -> None:
        entered.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()

    async def converts(event: Event, ctx: Context) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("interrupted") from None

    async def keeps_going(event: Event, ctx: Context) -> None:
        entered.set()
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    async def next_one(event: Event, ctx: Context) -> None:
        later.append(event.type)

    bus.subscribe("order.returns", returns, priority=1)
    bus.subscribe("order.converts", converts, priority=1)
    bus.subscribe("order.keeps", keeps_going, priority=1)
    bus.subscribe("order.*", next_one)
    async with bus:
        try:
            for type_ in ("order.returns", "order.converts", "order.keeps"):
                entered.clear()
                task = asyncio.create_task(bus.emit(Event(type=type_)))
                await entered.wait()
                task.cancel()
                done, _ = await asyncio.wait((task,), timeout=5)
                assert done, f"{type_}: the cancellation did not reach the caller"
                assert task.cancelled(), f"{type_}: {task.result()}"
            assert later == []  # the chain did not go on after the cancellation
            [left] = ABANDONED
            assert "abandoned handler" in left.get_name()
        finally:
            release.set()
        await asyncio.wait_for(left, 5)
    assert not ABANDONED


async def test_a_timed_out_handler_ignoring_its_cancellation_is_abandoned(
    registry: HandlerRegistry,
) -> None:
    bus = make_bus(registry)  # handlers.cancel_grace_s: 1 s
    release = asyncio.Event()

    async def stubborn(event: Event, ctx: Context) -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    async def after(event: Event, ctx: Context) -> None:
        return None

    bus.subscribe("order.x", stubborn, priority=1, timeout=0.05, name="t.stubborn")
    bus.subscribe("order.x", after, name="t.after")
    before = METRICS.handler_runs.child("t.stubborn", "timeout").value
    async with bus:
        emitting = asyncio.create_task(bus.emit(Event(type="order.x")))
        try:
            done, _ = await asyncio.wait((emitting,), timeout=5)
            assert done, "the event was never answered"
        finally:
            release.set()
        result = emitting.result()
        assert emitting.cancelling() == 0
        assert [(h.outcome, h.error) for h in result.handlers] == [
            ("timeout", "timed out after 0.05s and ignored its cancellation: abandoned"),
            ("ok", None),
        ]
        assert result.status == "published"
        assert len(ABANDONED) == 1
        await asyncio.wait_for(asyncio.gather(*ABANDONED), 5)
    assert METRICS.handler_runs.child("t.stubborn", "timeout").value == before + 1


async def test_a_cancelled_error_nobody_sent_is_the_handlers_error(
    registry: HandlerRegistry,
) -> None:
    bus = make_bus(registry)

    async def awaits_a_cancelled_future(event: Event, ctx: Context) -> None:
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future

    def raises_it(event: Event, ctx: Context) -> None:
        raise asyncio.CancelledError

    bus.subscribe("order.x", awaits_a_cancelled_future, priority=1)
    bus.subscribe("order.x", raises_it)
    async with bus:
        result = await bus.emit(Event(type="order.x"))
    assert [(h.outcome, h.error) for h in result.handlers] == [
        ("error", "CancelledError"),
        ("error", "CancelledError"),
    ]
    assert result.status == "published"


async def test_a_handlers_own_timeout_is_its_error_not_a_cancellation(
    registry: HandlerRegistry,
) -> None:
    """``asyncio.timeout`` inside a handler cancels the event's task and takes the
    cancellation back (uncancel): the handler's TimeoutError, not a CancelledError."""
    bus = make_bus(registry)
    after: list[str] = []

    async def own_timeout(event: Event, ctx: Context) -> None:
        async with asyncio.timeout(0.01):
            await asyncio.Event().wait()

    async def own_wait_for(event: Event, ctx: Context) -> None:
        await asyncio.wait_for(asyncio.Event().wait(), 0.01)

    async def next_one(event: Event, ctx: Context) -> None:
        after.append(event.id)

    bus.subscribe("order.x", own_timeout, priority=2)
    bus.subscribe("order.x", own_wait_for, priority=1)
    bus.subscribe("order.x", next_one)
    event = Event(type="order.x")
    async with bus:
        result = await bus.emit(event)
    assert [(h.outcome, (h.error or "").split(":")[0]) for h in result.handlers] == [
        ("error", "TimeoutError"),
        ("error", "TimeoutError"),
        ("ok", ""),
    ]
    assert after == [event.id]
    assert result.status == "published"


async def test_a_sync_run_waiting_for_a_thread_past_its_timeout_never_starts(
    registry: HandlerRegistry,
) -> None:
    bus = make_bus(registry, handlers={"threads": 1})
    gate = threading.Event()
    ran: list[str] = []

    def blocks(event: Event, ctx: Context) -> None:
        gate.wait(5)

    def queued(event: Event, ctx: Context) -> None:
        ran.append(event.id)

    bus.subscribe("order.block", blocks, timeout=0.05)
    bus.subscribe("order.queued", queued, timeout=0.05)
    # The same handler with room to run on a loaded machine, once the thread is free.
    bus.subscribe("order.later", queued, timeout=5)
    async with bus:
        first = await bus.emit(Event(type="order.block"))
        second = await bus.emit(Event(type="order.queued"))
        gate.set()
        await wait_until(lambda: not bus._threads.gauges().busy, timeout=5, what="idle threads")
        third = await bus.emit(Event(type="order.later"))
    assert (
        first.handlers[0].error == "timed out after 0.05s; its thread cannot be stopped and runs on"
    )
    assert second.handlers[0].error == (
        "timed out after 0.05s waiting for a free handler thread (all 1 busy)"
    )
    assert third.handlers[0].outcome == "ok"
    assert ran == [third.id]


async def test_stop_chain_and_skip(registry: HandlerRegistry) -> None:
    bus = make_bus(registry)
    ran: list[str] = []

    async def skipper(event: Event, ctx: Context) -> None:
        raise Skip("not for me")

    async def stopper(event: Event, ctx: Context) -> None:
        ran.append("stopper")
        raise StopChain("enough")

    async def never(event: Event, ctx: Context) -> None:
        ran.append("never")

    bus.subscribe("order.x", skipper, priority=3, name="skipper")
    bus.subscribe("order.x", stopper, priority=2, name="stopper")
    bus.subscribe("order.x", never, priority=1, name="never")
    async with bus:
        result = await bus.emit(Event(type="order.x"))
    assert [(h.name, h.outcome, h.error) for h in result.handlers] == [
        ("skipper", "skipped", "not for me"),
        ("stopper", "stopped", "enough"),
    ]
    assert ran == ["stopper"]
    assert result.status == "published"  # stopping the chain does not stop delivery


async def test_follow_ups_run_through_the_pipeline_and_nest_in_the_result(
    registry: HandlerRegistry,
) -> None:
    bus = make_bus(registry)

    async def on_invite(event: Event, ctx: Context) -> None:
        await ctx.emit(Event(type="order.member_added", data={"from": event.id}))

    seen: list[int] = []

    async def on_member(event: Event, ctx: Context) -> None:
        seen.append(ctx.depth)

    bus.subscribe("invite.accepted", on_invite)
    bus.subscribe("order.member_added", on_member)
    async with bus:
        result = await bus.emit(Event(type="invite.accepted", kind="domain"))
    assert result.status == "handled"
    [follow] = result.follow_ups
    assert follow.type == "order.member_added"
    assert follow.status == "published"
    assert seen == [1]
    assert [e.type for e in memory(bus).events] == ["order.member_added"]  # type: ignore[attr-defined]


async def test_follow_up_cycles_stop_at_the_depth_limit(registry: HandlerRegistry) -> None:
    bus = make_bus(registry, handlers={"max_depth": 3})

    async def loop(event: Event, ctx: Context) -> None:
        await ctx.emit(Event(type="order.loop"))

    bus.subscribe("order.loop", loop, name="loop")
    async with bus:
        result = await bus.emit(Event(type="order.loop"))
    depth = 0
    node = result
    while node.follow_ups:
        [node] = node.follow_ups
        depth += 1
    assert depth == 3
    assert node.handlers[0].outcome == "error"
    assert node.handlers[0].error is not None
    assert "max_depth is 3" in node.handlers[0].error
    ctx = Context(Event(type="x"), depth=3, max_depth=3)
    with pytest.raises(MaxDepthExceeded):
        await ctx.emit(Event(type="y"))


class Invite(msgspec.Struct):
    user_id: int
    group: str


async def test_typed_data_decodes_once_and_a_mismatch_is_that_handlers_error(
    registry: HandlerRegistry,
) -> None:
    bus = make_bus(registry)
    got: list[Any] = []

    async def typed(event: Event, ctx: Context) -> None:
        got.append(ctx.data)

    async def raw(event: Event, ctx: Context) -> None:
        got.append(ctx.data)

    bus.subscribe("invite.x", typed, data=Invite, name="typed", priority=2)
    bus.subscribe("invite.x", raw, name="raw", priority=1)
    async with bus:
        good = await bus.emit(
            Event(type="invite.x", kind="domain", data={"user_id": 1, "group": "g"})
        )
        bad = await bus.emit(Event(type="invite.x", kind="domain", data={"user_id": "one"}))
    assert got[0] == Invite(1, "g")
    assert got[1] == {"user_id": 1, "group": "g"}
    assert [h.outcome for h in good.handlers] == ["ok", "ok"]
    assert [h.outcome for h in bad.handlers] == ["error", "ok"]
    assert bad.handlers[0].error is not None
    assert "user_id" in bad.handlers[0].error


async def test_plain_def_handlers_run_off_the_loop(registry: HandlerRegistry) -> None:
    bus = make_bus(registry)
    threads: list[int] = []

    def blocking(event: Event, ctx: Context) -> None:
        threads.append(threading.get_ident())
        time.sleep(0.05)

    inline_threads: list[int] = []

    def cheap(event: Event, ctx: Context) -> None:
        inline_threads.append(threading.get_ident())

    bus.subscribe("order.x", blocking)
    bus.subscribe("order.x", cheap, inline=True)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    async with bus:
        tick_task = asyncio.create_task(ticker())
        result = await bus.emit(Event(type="order.x"))
        tick_task.cancel()
    assert [h.outcome for h in result.handlers] == ["ok", "ok"]
    assert threads[0] != threading.get_ident()
    assert inline_threads == [threading.get_ident()]
    assert ticks >= 3  # the loop kept running while the sync handler slept


async def test_no_handler_is_fine_and_counted(registry: HandlerRegistry) -> None:
    bus = make_bus(registry)
    unhandled = METRICS.events_unhandled.child()
    before = unhandled.value
    async with bus:
        result = await bus.emit(Event(type="order.quiet"))
    assert result.status == "published"
    assert result.handlers == []
    assert unhandled.value == before + 1


async def test_notification_without_route_is_rejected_not_dropped(
    registry: HandlerRegistry,
) -> None:
    bus = make_bus(registry)
    async with bus:
        result = await bus.emit(Event(type="nowhere.x"))
        domain = await bus.emit(Event(type="nowhere.x", kind="domain"))
    assert result.status == "rejected"
    assert result.error is not None
    assert result.error.code == "no_route"
    assert domain.status == "handled"
    assert memory(bus).items == []


async def test_key_template_and_missing_field(registry: HandlerRegistry) -> None:
    bus = make_bus(registry)
    async with bus:
        ok = await bus.emit(Event(type="keyed.a", data={"user": 42}, key="ignored"))
        missing = await bus.emit(Event(type="keyed.a", data={}))
    assert memory(bus).items[0].key == "42"
    assert ok.status == "published"
    assert missing.status == "rejected"
    assert missing.error is not None
    assert (missing.error.code, missing.error.field) == ("template_error", "data.user")


async def test_subscribe_and_unsubscribe(registry: HandlerRegistry) -> None:
    bus = make_bus(registry)
    calls: list[str] = []

    async def handler(event: Event, ctx: Context) -> None:
        calls.append(event.type)

    bus.unsubscribe("order.*", handler)  # never subscribed: a no-op
    bus.subscribe("order.*", handler)
    async with bus:
        await bus.emit(Event(type="order.a"))
        bus.unsubscribe("order.*", handler)
        await bus.emit(Event(type="order.b"))
    assert calls == ["order.a"]


async def test_runtime_subscriptions_do_not_leak_between_buses(registry: HandlerRegistry) -> None:
    one, two = make_bus(registry), make_bus(registry)

    async def handler(event: Event, ctx: Context) -> None:
        return None

    one.subscribe("order.*", handler)
    assert len(one.handlers()) == 1
    assert two.handlers() == []


async def test_emit_many_limits_concurrency_and_keeps_publish_order(
    registry: HandlerRegistry,
) -> None:
    bus = make_bus(registry, handlers={"concurrency": 4})
    running = 0
    peak = 0

    async def slow(event: Event, ctx: Context) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        # Later events finish sooner, to show publish order does not follow finish order.
        await asyncio.sleep(0.001 * (20 - event.data["i"]))
        running -= 1

    bus.subscribe("keyed.*", slow)
    events = [Event(type="keyed.a", data={"i": i, "user": "u1"}) for i in range(20)]
    async with bus:
        results = await bus.emit_many(events)
        limited = await bus.emit_many(events[:6], concurrency=1)
    assert peak == 4
    assert [r.id for r in results] == [e.id for e in events]
    assert [e.data["i"] for e in memory(bus).events[:20]] == list(range(20))  # type: ignore[attr-defined]
    assert all(r.status == "published" for r in results + limited)
    offsets = [r.deliveries[0].offset for r in results]
    assert offsets == sorted(offsets)


async def test_emit_many_starts_workers_only_when_handlers_wait(
    registry: HandlerRegistry,
) -> None:
    bus = make_bus(registry, handlers={"concurrency": 8})
    tasks: dict[int, asyncio.Task[object] | None] = {}

    async def record(event: Event, ctx: Context) -> None:
        tasks[event.data["i"]] = asyncio.current_task()
        if event.data["wait"]:
            await asyncio.sleep(0)

    bus.subscribe("keyed.*", record)
    quick = [Event(type="keyed.a", data={"i": i, "wait": False, "user": "u1"}) for i in range(10)]
    waiting = [
        Event(type="keyed.a", data={"i": i, "wait": True, "user": "u1"}) for i in range(10, 20)
    ]
    async with bus:
        results = await bus.emit_many(quick)
        assert set(tasks.values()) == {asyncio.current_task()}
        results += await bus.emit_many(waiting)
    assert len(set(tasks.values())) > 2  # the waiting events spread over more workers
    assert [r.id for r in results] == [e.id for e in quick + waiting]
    assert [r.status for r in results] == ["published"] * 20


async def test_emit_many_mixes_outcomes_per_event(registry: HandlerRegistry) -> None:
    bus = make_bus(registry)
    async with bus:
        results = await bus.emit_many(
            [
                Event(type="order.a"),
                Event(type="nowhere"),
                Event(type="d", kind="domain"),
                Event(type="keyed.x"),
            ]
        )
    assert [r.status for r in results] == ["published", "rejected", "handled", "rejected"]


async def test_source_defaults_from_config(registry: HandlerRegistry) -> None:
    bus = Bus(
        parse_config(
            {
                "source": "evbridge://unit",
                "sinks": [{"name": "mem", "type": "memory"}],
                "routes": [{"match": "*", "sink": "mem"}],
                "handlers": {"entry_points": False},
            },
            {},
        ),
        registry=registry,
    )
    async with bus:
        await bus.emit(Event(type="a"))
        await bus.emit(Event(type="b", source="mine"))
    assert [e.source for e in memory(bus).events] == ["evbridge://unit", "mine"]  # type: ignore[attr-defined]


async def test_notifications_need_a_started_bus(registry: HandlerRegistry) -> None:
    bus = make_bus(registry)
    with pytest.raises(BridgeError) as info:
        await bus.emit(Event(type="order.a"))
    assert info.value.code == "not_started"
    assert (await bus.emit(Event(type="x", kind="domain"))).status == "handled"


def test_handler_modules_are_imported_and_failures_name_the_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "good_handlers_mod.py").write_text(
        "from bridge import on\n@on('mod.*')\nasync def h(event, ctx):\n    pass\n"
    )
    (tmp_path / "broken_handlers_mod.py").write_text("raise RuntimeError('no database')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    base = {"handlers": {"entry_points": False, "modules": ["good_handlers_mod"]}}
    bus = Bus(parse_config(base, {}))
    assert any(h.pattern == "mod.*" for h in bus.handlers())
    with pytest.raises(ConfigError) as info:
        Bus(
            parse_config(
                {"handlers": {"entry_points": False, "modules": ["broken_handlers_mod"]}}, {}
            )
        )
    assert "broken_handlers_mod" in str(info.value)
    assert "no database" in str(info.value)
    assert info.value.field == "handlers.modules[0]"
    # Keep the process-wide registry clean for other tests.
    from bridge.handlers import registry as default

    for handler in list(default.all()):
        if handler.pattern == "mod.*":
            default.remove("mod.*", handler.fn)
    sys.modules.pop("good_handlers_mod", None)


async def test_file_sink_writes_fsynced_json_lines(
    registry: HandlerRegistry, tmp_path: Path
) -> None:
    path = tmp_path / "out.jsonl"
    bus = Bus(
        parse_config(
            {
                "sinks": [{"name": "f", "type": "file", "path": str(path)}],
                "routes": [{"match": "*", "sink": "f"}],
                "handlers": {"entry_points": False},
            },
            {},
        ),
        registry=registry,
    )
    calls = METRICS.publish_batch_size.child("f")
    calls_before = sum(calls.buckets)
    async with bus:
        results = await asyncio.gather(
            *(bus.emit(Event(type="f.x", data={"n": i})) for i in range(10))
        )
    lines = path.read_bytes().splitlines()
    assert len(lines) == 10
    decoded = [msgspec.json.decode(line) for line in lines]
    assert sorted(d["data"]["n"] for d in decoded) == list(range(10))
    assert {d["id"] for d in decoded} == {r.id for r in results}
    assert len({r.deliveries[0].offset for r in results}) == 10
    # Concurrent single emits were coalesced into one write (and one fsync).
    assert sum(calls.buckets) - calls_before == 1


async def test_a_handler_blocking_the_loop_is_named_and_counted(
    registry: HandlerRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    bus = make_bus(registry, handlers={"loop_warn_s": 0.1})

    async def blocker(event: Event, ctx: Context) -> None:
        time.sleep(0.4)  # noqa: ASYNC251 - the bad handler under test

    bus.subscribe("order.block", blocker, name="tests.blocker")
    blocked = METRICS.errors.labels("handler", "loop_blocked")
    before = blocked._value.get()
    async with bus:
        result = await bus.emit(Event(type="order.block"))
        assert bus._loopwatch is not None
        assert bus._loopwatch.stalls == 1
        watch = bus._loopwatch
        # The lag is recorded by the first heartbeat after the stall.
        await wait_until(lambda: watch.max_lag >= 0.2, timeout=2, what="lag recorded")
    assert result.handlers[0].outcome == "ok"
    warnings = [
        r.getMessage() for r in caplog.records if "event loop has been blocked" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert "tests.blocker" in warnings[0]
    assert blocked._value.get() == before + 1
