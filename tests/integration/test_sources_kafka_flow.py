"""The Kafka source's flow on a Tansu broker: order per key under concurrency, a slow
key not blocking the others, pause() backpressure at ``max_records``, and a commit
that never passes an unfinished record (checked by stopping mid-work and reading the
group's committed offset and what is consumed again)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]

from bridge import Context, Event
from bridge.handlers import HandlerRegistry
from bridge.sources import Sources
from bridge.sources.kafka.flow import Flow
from tests.brokers import KafkaBroker, create_topic, unique_name, wait_until
from tests.integration.source_support import KAFKA_TIMEOUT as TIMEOUT
from tests.integration.source_support import consumed, sample, until_consumed
from tests.integration.source_support import kafka_consumer as consumer
from tests.integration.source_support import kafka_publisher as publisher


def flow_of(sources: Sources) -> Flow:
    link: Any = sources.sources["in"]._supervisor.current()  # type: ignore[attr-defined]
    assert isinstance(link.flow, Flow)
    return link.flow


async def committed(bootstrap: str, topic: str, group: str) -> int | None:
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                              enable_auto_commit=False)  # fmt: skip
    await reader.start()
    try:
        offset: int | None = await reader.committed(TopicPartition(topic, 0))
        return offset
    finally:
        await reader.stop()


def keyed(n: int, keys: int) -> list[Event]:
    return [sample(id=f"e{i}", key=f"k{i % keys}", data={"n": i}) for i in range(n)]


async def test_per_key_order_holds_under_concurrency_and_a_slow_key_does_not_block(
    kafka_broker: KafkaBroker, registry: HandlerRegistry
) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = await create_topic(bootstrap, unique_name("src-kf"), 1)
    events = keyed(60, 6)
    release = asyncio.Event()
    seen: dict[str, list[int]] = {}

    async def work(event: Event, ctx: Context) -> None:
        assert isinstance(event.data, dict)
        if event.id == "e0":
            await release.wait()  # key k0 is slow: its later records wait behind it
        else:
            await asyncio.sleep(random.random() * 0.005)  # shuffles the finishes
        seen.setdefault(str(event.key), []).append(event.data["n"])

    bus, sources = consumer(bootstrap, topic, unique_name("g"), registry, order="key",
                            concurrency=4)  # fmt: skip
    bus.subscribe("order.*", work, name="work", timeout=60)
    async with publisher(bootstrap, topic) as out:
        assert {r.status for r in await out.emit_many(events)} == {"published"}
    async with bus, sources:
        others = sum(1 for e in events if e.key != "k0")
        await wait_until(lambda: sum(len(v) for k, v in seen.items() if k != "k0") == others,
                         timeout=TIMEOUT, what="every other key handled")  # fmt: skip
        assert "k0" not in seen  # still blocked behind e0, in order
        release.set()
        await until_consumed(bus, 60, timeout=TIMEOUT)
        flow = flow_of(sources)
        assert 1 < flow.most_running <= 4
    for key, numbers in seen.items():
        assert numbers == sorted(numbers), key
        assert numbers == [e.data["n"] for e in events if e.key == key]  # type: ignore[index]


async def test_fetching_pauses_at_max_records_and_resumes(
    kafka_broker: KafkaBroker, registry: HandlerRegistry
) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = await create_topic(bootstrap, unique_name("src-kf"), 1)
    release = asyncio.Event()

    async def blocks(event: Event, ctx: Context) -> None:
        await release.wait()

    bus, sources = consumer(bootstrap, topic, unique_name("g"), registry, order="key",
                            concurrency=2, max_records=5)  # fmt: skip
    bus.subscribe("order.*", blocks, name="blocks", timeout=60)
    async with publisher(bootstrap, topic) as out:
        assert {r.status for r in await out.emit_many(keyed(50, 10))} == {"published"}
    async with bus, sources:
        await wait_until(lambda: flow_of(sources).held == 5, timeout=TIMEOUT, what="5 held")
        flow = flow_of(sources)
        tp = TopicPartition(topic, 0)
        await wait_until(lambda: tp in flow.consumer.paused(), timeout=TIMEOUT, what="paused")
        assert (flow.held, flow.running) == (5, 2)
        release.set()
        await until_consumed(bus, 50, timeout=TIMEOUT)
        assert flow.held <= 5
        assert flow.pauses >= 1
        await wait_until(lambda: tp not in flow.consumer.paused(), timeout=TIMEOUT,
                         what="resumed")  # fmt: skip


async def test_the_commit_never_passes_an_unfinished_record_of_another_key(
    kafka_broker: KafkaBroker, registry: HandlerRegistry
) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = await create_topic(bootstrap, unique_name("src-kf"), 1)
    group = unique_name("g")
    events = keyed(20, 4)  # offset i is e{i}; e5 has key k1
    never = asyncio.Event()
    first: list[str] = []

    async def stuck_at_e5(event: Event, ctx: Context) -> None:
        if event.id == "e5":
            await never.wait()
        first.append(event.id)

    bus, sources = consumer(bootstrap, topic, group, registry, order="key", concurrency=4,
                            grace_s=0.2)  # fmt: skip
    bus.subscribe("order.*", stuck_at_e5, name="stuck", timeout=60)
    async with publisher(bootstrap, topic) as out:
        assert {r.status for r in await out.emit_many(events)} == {"published"}
    async with bus:
        await sources.start()
        try:
            # Everything but e5 and the later records of its key k1 (9, 13, 17) finishes.
            await wait_until(lambda: len(first) == 16, timeout=TIMEOUT, what="16 handled")
            flow = flow_of(sources)
            await wait_until(lambda: flow.held == 4, timeout=TIMEOUT, what="k1 held")
        finally:
            await sources.stop()  # e5 abandoned after grace_s
    assert sorted(first, key=lambda i: int(i[1:])) == [
        e.id for e in events if e.id not in ("e5", "e9", "e13", "e17")
    ]
    assert await committed(bootstrap, topic, group) == 5  # the lowest unfinished offset
    again: list[str] = []
    bus2, sources2 = consumer(bootstrap, topic, group, HandlerRegistry())
    bus2.subscribe("order.*", lambda event, ctx: again.append(event.id), name="again")
    async with bus2, sources2:
        await wait_until(lambda: len(again) == 15, timeout=TIMEOUT, what="offsets 5.. again")
    assert again == [f"e{i}" for i in range(5, 20)]


async def test_lag_is_the_highwater_minus_the_lowest_unfinished_offset(
    kafka_broker: KafkaBroker, registry: HandlerRegistry
) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = await create_topic(bootstrap, unique_name("src-kf"), 1)
    release = asyncio.Event()

    async def blocks(event: Event, ctx: Context) -> None:
        await release.wait()

    bus, sources = consumer(bootstrap, topic, unique_name("g"), registry, max_records=5)
    bus.subscribe("order.*", blocks, name="blocks", timeout=60)
    source: Any = sources.sources["in"]
    assert source.lag() is None  # not consuming yet
    async with publisher(bootstrap, topic) as out:
        assert {r.status for r in await out.emit_many(keyed(30, 3))} == {"published"}
    async with bus, sources:
        await wait_until(lambda: source.lag() == 30, timeout=TIMEOUT, what="lag 30")
        release.set()
        await wait_until(lambda: source.lag() == 0, timeout=TIMEOUT, what="lag 0")
        assert consumed(bus, "ok") == 30
