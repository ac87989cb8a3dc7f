"""The Kafka source against a Tansu broker the tests start: publish (through the real
sink) -> consume -> handlers, in order per partition, and offsets committed only when
done. Topics and groups are unique per test."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]

from bridge import Context, Event
from bridge.handlers import HandlerRegistry
from tests.brokers import KafkaBroker, create_topic, unique_name, wait_until
from tests.integration.source_support import KAFKA_TIMEOUT as TIMEOUT
from tests.integration.source_support import check_sources, consumed, sample, until_consumed
from tests.integration.source_support import kafka_consumer as consumer
from tests.integration.source_support import kafka_publisher as publisher

# The other Kafka source tests take these from here.
__all__ = ["TIMEOUT", "consumed", "consumer", "publisher", "sample"]


async def test_round_trip_in_order_with_an_undecodable_record_dead_lettered(
    kafka_broker: KafkaBroker, registry: HandlerRegistry
) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = await create_topic(bootstrap, unique_name("src-k"), 1)
    dead = await create_topic(bootstrap, unique_name("src-k-dead"), 1)
    got: list[Event] = []
    bus, sources = consumer(
        bootstrap, topic, unique_name("g"), registry, dead_letter_topic=dead,
        event_type="kafka.{topic}",
    )  # fmt: skip
    bus.subscribe("*", lambda event, ctx: got.append(event), name="record")
    events = [sample(id=f"e{i}", data={"i": i}) for i in range(20)]
    async with publisher(bootstrap, topic) as out:
        assert {r.status for r in await out.emit_many(events[:10])} == {"published"}
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                topic, b"{broken", headers=[("content-type", b"application/json")]
            )
            await producer.send_and_wait(topic, b'{"job": 1}')
        finally:
            await producer.stop()
        assert {r.status for r in await out.emit_many(events[10:])} == {"published"}
        async with bus, sources:
            await until_consumed(bus, 21, timeout=TIMEOUT)
    ids = [e.id for e in got if e.type == "order.created"]
    assert ids == [e.id for e in events]  # one partition: in order
    assert [msgspec.structs.replace(e, kind="notification") for e in got if e.id == "e0"] == [
        events[0]
    ]
    plain = [e for e in got if e.type == f"kafka.{topic}"]
    assert [e.data for e in plain] == [{"job": 1}]
    assert consumed(bus, "undecodable") == 1
    reader = AIOKafkaConsumer(dead, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await reader.start()
    try:
        record = await asyncio.wait_for(reader.getone(), TIMEOUT)
    finally:
        await reader.stop()
    assert record.value == b"{broken"
    assert b"not JSON" in dict(record.headers)["evbridge-reason"]


async def test_an_unfinished_record_is_consumed_again_by_the_group(
    kafka_broker: KafkaBroker, registry: HandlerRegistry
) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = await create_topic(bootstrap, unique_name("src-k"), 1)
    group = unique_name("g")
    entered = asyncio.Event()
    release = asyncio.Event()

    async def blocks(event: Event, ctx: Context) -> None:
        entered.set()
        await release.wait()

    bus, sources = consumer(bootstrap, topic, group, registry, grace_s=0.2)
    bus.subscribe("order.*", blocks, name="blocks", timeout=60)
    async with publisher(bootstrap, topic) as out, bus:
        await out.emit(sample(id="slow"))
        await sources.start()
        try:
            await asyncio.wait_for(entered.wait(), TIMEOUT)
        finally:
            await sources.stop()  # not finished: its offset is not committed
            release.set()
        assert consumed(bus, "ok") == 0
    handled: list[str] = []
    again, sources2 = consumer(bootstrap, topic, group, HandlerRegistry())
    again.subscribe("order.*", lambda event, ctx: handled.append(event.id), name="again")
    async with again, sources2:
        await wait_until(lambda: handled == ["slow"], timeout=TIMEOUT, what="consumed again")
        await until_consumed(again, 1, timeout=TIMEOUT)


async def test_check_reports_missing_topics_without_joining_the_group(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = await create_topic(bootstrap, unique_name("src-k"), 1)
    base = {"type": "kafka", "bootstrap_servers": bootstrap, "group_id": unique_name("g")}
    sources = [
        {**base, "name": "ok", "topics": [topic]},
        {**base, "name": "missing", "topics": [unique_name("src-k-none")]},
    ]
    lines = await check_sources(tmp_path, sources, timeout=15)
    assert lines["source ok (kafka)"].ok
    assert not lines["source missing (kafka)"].ok
    assert "do not exist" in lines["source missing (kafka)"].detail


async def test_lag_in_flight_and_commit_latency_are_measured(
    kafka_broker: KafkaBroker, registry: HandlerRegistry
) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = await create_topic(bootstrap, unique_name("src-k-lag"), 1)
    entered = asyncio.Event()
    release = asyncio.Event()

    async def blocks(event: Event, ctx: Context) -> None:
        entered.set()
        await release.wait()

    bus, sources = consumer(bootstrap, topic, unique_name("g"), registry, max_records=1,
                            start="earliest")  # fmt: skip
    bus.subscribe("order.*", blocks, name="blocks", timeout=60)
    metrics = bus.metrics
    async with publisher(bootstrap, topic) as out:
        events = [sample(id=f"lag-{i}") for i in range(4)]
        assert {r.status for r in await out.emit_many(events)} == {"published"}
        async with bus, sources:
            await asyncio.wait_for(entered.wait(), TIMEOUT)
            await sources.sample_lag()
            # One record fetched and being handled, three not fetched: lag counts from the
            # lowest unfinished offset (what a commit now would store), so all four.
            assert metrics.consumer_lag.labels("in")._value.get() == 4  # type: ignore[attr-defined]
            inflight = ("evbridge_source_inflight_events", {"source": "in"})
            assert metrics.registry.get_sample_value(*inflight) == 1
            release.set()
            await until_consumed(bus, 4, timeout=TIMEOUT)
            await wait_until(
                lambda: (metrics.registry.get_sample_value(
                    "evbridge_source_ack_duration_seconds_count", {"source": "in"}) or 0) >= 1,
                # The committer coalesces finishes meanwhile: at least one commit, not four.
                timeout=TIMEOUT, what="a commit timed",
            )  # fmt: skip
            await sources.sample_lag()
            assert metrics.consumer_lag.labels("in")._value.get() == 0  # type: ignore[attr-defined]
