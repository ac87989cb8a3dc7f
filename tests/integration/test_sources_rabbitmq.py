"""The RabbitMQ source against the machine's broker: publish (through the real sink) ->
consume -> handlers, and the commit rule. Every test has its own exchange and queues
(``unique_name``), deleted afterwards; the broker itself is never touched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import msgspec
import pytest
from yarl import URL

from bridge import Bus, Context, Event
from bridge.handlers import HandlerRegistry
from bridge.sinks.memory import MemorySink
from bridge.sources import Sources
from tests.brokers import LOCALHOST, RabbitMQ, TcpProxy, unique_name, wait_until
from tests.integration import source_support
from tests.integration.source_support import (
    QUICK,
    TIMEOUT,
    amqp,
    check_sources,
    consumed,
    queue_depth,
    sink_bus,
    source_bus,
    until_consumed,
)

__all__ = ["amqp"]


class Names:
    def __init__(self) -> None:
        self.exchange = unique_name("src-x")
        self.queue = unique_name("src-q")
        self.dead = unique_name("src-dlq")


@pytest.fixture
async def names(amqp: aio_pika.abc.AbstractChannel) -> AsyncIterator[Names]:
    names = Names()
    await amqp.declare_exchange(names.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    await amqp.declare_queue(names.dead, durable=True)
    yield names
    for queue in (names.queue, names.dead):
        await amqp.queue_delete(queue)
    await amqp.exchange_delete(names.exchange)


def publisher(rabbitmq: RabbitMQ, names: Names, mode: str = "binary") -> Bus:
    """A bus whose sink writes to the test's exchange (routing key: the event type)."""
    sink = {"name": "rmq", "type": "rabbitmq", "url": rabbitmq.url,
            "exchange": names.exchange, "mode": mode}  # fmt: skip
    return sink_bus(sink, routing_key="{type}")


def consumer(
    rabbitmq: RabbitMQ, names: Names, registry: HandlerRegistry, **source: Any
) -> tuple[Bus, Sources]:
    """A bus with one rabbitmq source on the test's queue (handlers only by default)."""
    sinks = source.pop("sinks", [])
    routes = source.pop("routes", [])
    fields = {
        "type": "rabbitmq", "url": rabbitmq.url, "queue": names.queue,
        "bindings": [{"exchange": names.exchange, "routing_keys": ["#"]}], **QUICK, **source,
    }  # fmt: skip
    return source_bus(registry, fields, sinks=sinks, routes=routes)


def sample(**overrides: Any) -> Event:
    """The shared sample with typed extensions, which AMQP headers carry."""
    extensions = {"tenant": "acme", "count": 3, "flag": True}
    return source_support.sample(**{"extensions": extensions, **overrides})


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_round_trip_gives_an_equal_event(
    rabbitmq: RabbitMQ, names: Names, registry: HandlerRegistry, mode: str
) -> None:
    got: list[Event] = []
    bus, sources = consumer(rabbitmq, names, registry)
    bus.subscribe("order.*", lambda event, ctx: got.append(event), name="record")
    sent = sample()
    async with bus, sources, publisher(rabbitmq, names, mode) as out:
        result = await out.emit(sent)
        assert result.status == "published"
        await wait_until(lambda: len(got) == 1, timeout=TIMEOUT, what="the event consumed")
        await until_consumed(bus, 1)
    # route: false hands it to the handlers as a domain event; all else is as sent.
    assert got[0].kind == "domain"
    assert msgspec.structs.replace(got[0], kind="notification") == sent


async def test_every_event_is_handled_and_acked(
    rabbitmq: RabbitMQ, names: Names, registry: HandlerRegistry, amqp: aio_pika.abc.AbstractChannel
) -> None:
    seen: set[str] = set()

    async def handler(event: Event, ctx: Context) -> None:
        await asyncio.sleep(0)
        seen.add(event.id)

    bus, sources = consumer(rabbitmq, names, registry, prefetch=16)
    bus.subscribe("order.*", handler, name="collect")
    events = [sample(id=f"e{i}", data={"i": i}) for i in range(300)]
    async with bus, sources, publisher(rabbitmq, names) as out:
        results = await out.emit_many(events)
        assert {r.status for r in results} == {"published"}
        await until_consumed(bus, 300)
    assert seen == {e.id for e in events}
    assert await queue_depth(amqp, names.queue) == 0


async def test_a_message_is_acked_only_after_its_handler_finished(
    rabbitmq: RabbitMQ, names: Names, registry: HandlerRegistry, amqp: aio_pika.abc.AbstractChannel
) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def blocks(event: Event, ctx: Context) -> None:
        entered.set()
        await release.wait()

    bus, sources = consumer(rabbitmq, names, registry, grace_s=0.2)
    bus.subscribe("order.*", blocks, name="blocks", timeout=60)
    sent = sample()
    async with bus, publisher(rabbitmq, names) as out:
        await sources.start()
        try:
            await out.emit(sent)
            await asyncio.wait_for(entered.wait(), TIMEOUT)
            assert await queue_depth(amqp, names.queue) == 0  # handed out, not acked
        finally:
            await sources.stop()  # the handler has not finished: the message stays unacked
            release.set()
    assert consumed(bus, "ok") == 0
    queue = await amqp.declare_queue(names.queue, passive=True)
    message = await queue.get(timeout=TIMEOUT)
    assert message is not None
    assert message.redelivered
    assert message.message_id == sent.id
    await message.ack()


async def test_undecodable_is_dead_lettered_while_neighbours_proceed(
    rabbitmq: RabbitMQ, names: Names, registry: HandlerRegistry, amqp: aio_pika.abc.AbstractChannel
) -> None:
    got: list[Event] = []
    bus, sources = consumer(
        rabbitmq, names, registry, event_type="amqp.{routing_key}",
        dead_letter_exchange="", dead_letter_routing_key=names.dead,
    )  # fmt: skip
    bus.subscribe("*", lambda event, ctx: got.append(event), name="record")
    exchange = await amqp.get_exchange(names.exchange)
    async with bus, sources, publisher(rabbitmq, names) as out:
        await out.emit(sample(id="before"))
        await exchange.publish(
            aio_pika.Message(b"{broken", content_type="application/json", message_id="bad"),
            routing_key="jobs.broken",
        )
        await exchange.publish(aio_pika.Message(b'{"job": 1}'), routing_key="jobs.plain")
        await exchange.publish(
            aio_pika.Message(b"hello", content_type="text/plain"), routing_key="jobs.text"
        )
        await out.emit(sample(id="after"))
        await wait_until(lambda: len(got) == 4, timeout=TIMEOUT, what="four events handled")
        await until_consumed(bus, 1, "undecodable")
    by_type = {e.type: e for e in got}
    assert [e.id for e in got if e.type == "order.created"] == ["before", "after"]
    assert by_type["amqp.jobs.plain"].data == {"job": 1}
    assert by_type["amqp.jobs.text"].data == "hello"
    assert consumed(bus, "ok") == 4
    dead = await (await amqp.declare_queue(names.dead, passive=True)).get(timeout=TIMEOUT)
    assert dead is not None
    assert dead.body == b"{broken"
    assert dead.message_id == "bad"
    headers = dead.headers or {}
    assert "not JSON" in str(headers["x-evbridge-reason"])
    assert headers["x-evbridge-source"] == "in"
    await dead.ack()


async def test_route_true_relays_consumed_events_to_a_sink(
    rabbitmq: RabbitMQ, names: Names, registry: HandlerRegistry
) -> None:
    bus, sources = consumer(
        rabbitmq, names, registry, route=True,
        sinks=[{"name": "mem", "type": "memory"}], routes=[{"match": "order.*", "sink": "mem"}],
    )  # fmt: skip
    sent = sample()
    async with bus, sources, publisher(rabbitmq, names) as out:
        await out.emit(sent)
        await until_consumed(bus, 1)
        sink = bus.sinks["mem"]
        assert isinstance(sink, MemorySink)
        assert [item.event for item in sink.items] == [sent]


async def test_check_reports_each_source_without_consuming(
    rabbitmq: RabbitMQ, names: Names, amqp: aio_pika.abc.AbstractChannel, tmp_path: Path
) -> None:
    missing = unique_name("src-missing")
    sources = [
        {"name": "dead", "type": "rabbitmq", "url": rabbitmq.url, "queue": names.dead},
        {"name": "gone", "type": "rabbitmq", "url": rabbitmq.url, "queue": missing,
         "declare": False},
        {"name": "new", "type": "rabbitmq", "url": rabbitmq.url, "queue": missing},
    ]  # fmt: skip
    await amqp.default_exchange.publish(aio_pika.Message(b"x"), routing_key=names.dead)
    lines = await check_sources(tmp_path, sources, timeout=10)
    assert lines["source dead (rabbitmq)"].ok
    assert "1 messages ready" in lines["source dead (rabbitmq)"].detail
    assert not lines["source gone (rabbitmq)"].ok
    assert "does not exist" in lines["source gone (rabbitmq)"].detail
    assert lines["source new (rabbitmq)"].ok
    assert "will be declared" in lines["source new (rabbitmq)"].detail
    assert await queue_depth(amqp, names.dead) == 1  # nothing consumed


async def test_a_lost_connection_redelivers_what_was_in_flight_and_consuming_resumes(
    rabbitmq: RabbitMQ, names: Names, registry: HandlerRegistry, amqp: aio_pika.abc.AbstractChannel
) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    handled: list[str] = []

    async def first_blocks(event: Event, ctx: Context) -> None:
        if not handled:
            entered.set()
            handled.append(event.id)
            await release.wait()
            return
        handled.append(event.id)

    async with TcpProxy(LOCALHOST, URL(rabbitmq.url).port or 5672) as proxy:
        url = f"amqp://guest:guest@{LOCALHOST}:{proxy.port}/"
        bus, sources = consumer(rabbitmq, names, registry, url=url, reconnect_max_s=0.5)
        bus.subscribe("order.*", first_blocks, name="first-blocks", timeout=60)
        async with bus, sources, publisher(rabbitmq, names) as out:
            await out.emit(sample(id="in-flight"))
            await asyncio.wait_for(entered.wait(), TIMEOUT)
            assert await proxy.cut() >= 1  # the source's connection is gone mid-handler
            release.set()  # its ack now has no channel: the broker redelivers the message
            await wait_until(
                lambda: handled == ["in-flight", "in-flight"], timeout=TIMEOUT, what="redelivery"
            )
            await out.emit(sample(id="after"))
            await until_consumed(bus, 3)
    assert handled == ["in-flight", "in-flight", "after"]
    assert bus.metrics.consumed_again.labels("in")._value.get() == 1  # type: ignore[attr-defined]
    assert await queue_depth(amqp, names.queue) == 0


async def test_the_dedupe_window_drops_an_event_consumed_again(
    rabbitmq: RabbitMQ, names: Names, registry: HandlerRegistry, amqp: aio_pika.abc.AbstractChannel
) -> None:
    # The same event arrives twice (a producer's retry, or a message handled and acked
    # just as its connection went): its handler runs once, both messages are acked.
    runs: list[str] = []
    bus, sources = consumer(rabbitmq, names, registry, dedupe={"window_s": 60})
    bus.subscribe("order.*", lambda event, ctx: runs.append(event.id), name="record")
    sent = sample(id="dup-1")
    async with bus, sources, publisher(rabbitmq, names) as out:
        for event in (sent, sent, sample(id="dup-2")):
            assert (await out.emit(event)).status == "published"
        await wait_until(
            lambda: consumed(bus, "ok") + consumed(bus, "duplicate") == 3,
            timeout=TIMEOUT,
            what="three acked",
        )
    assert sorted(runs) == ["dup-1", "dup-2"]
    assert consumed(bus, "duplicate") == 1
    assert bus.metrics.dedupe_dropped.labels("in")._value.get() == 1  # type: ignore[attr-defined]
    assert await queue_depth(amqp, names.queue) == 0


async def test_lag_in_flight_and_ack_latency_are_measured(
    rabbitmq: RabbitMQ, names: Names, registry: HandlerRegistry
) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def blocks(event: Event, ctx: Context) -> None:
        entered.set()
        await release.wait()

    bus, sources = consumer(rabbitmq, names, registry, prefetch=1)
    bus.subscribe("order.*", blocks, name="blocks", timeout=60)
    metrics = bus.metrics

    def inflight() -> float | None:
        name = "evbridge_source_inflight_events"
        return metrics.registry.get_sample_value(name, {"source": "in"})

    async with bus, sources, publisher(rabbitmq, names) as out:
        for i in range(4):
            assert (await out.emit(sample(id=f"lag-{i}"))).status == "published"
        await asyncio.wait_for(entered.wait(), TIMEOUT)
        await sources.sample_lag()
        # prefetch 1: one handed out and being handled, three ready in the queue.
        assert metrics.consumer_lag.labels("in")._value.get() == 3  # type: ignore[attr-defined]
        assert inflight() == 1
        release.set()
        await until_consumed(bus, 4)
        await sources.sample_lag()
        assert metrics.consumer_lag.labels("in")._value.get() == 0  # type: ignore[attr-defined]
        assert inflight() == 0
    acks = metrics.registry.get_sample_value(
        "evbridge_source_ack_duration_seconds_count", {"source": "in"}
    )
    assert acks == 4
