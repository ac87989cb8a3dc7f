"""Two Kafka sources (two bridge instances) sharing one consumer group on a Tansu
broker: the partitions are split between them, and move to the one left when the
other stops; the revoked partitions' done records are committed first, so every
record is handled (at least once) across the two."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]

from bridge import Bus, Context, Event
from bridge.handlers import HandlerRegistry
from bridge.sources import Sources
from tests.brokers import KafkaBroker, create_topic, unique_name, wait_until
from tests.integration.source_support import kafka_consumer as consumer
from tests.integration.source_support import kafka_publisher as publisher
from tests.integration.source_support import sample

TIMEOUT = 60.0  # a rebalance waits for the other member's heartbeat


def assignment(sources: Sources) -> set[Any]:
    link: Any = sources.sources["in"]._supervisor.current()  # type: ignore[attr-defined]
    if not hasattr(link, "consumer"):
        return set()
    return set(link.consumer.assignment())


async def test_two_instances_split_the_partitions_and_take_over_when_one_stops(
    kafka_broker: KafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.sources.kafka")
    bootstrap = kafka_broker.bootstrap
    topic = await create_topic(bootstrap, unique_name("src-kg"), 4)
    group = unique_name("g")
    all_tps = {TopicPartition(topic, p) for p in range(4)}
    handled: dict[str, list[str]] = {"a": [], "b": []}

    def recorder(who: str) -> Any:
        async def record(event: Event, ctx: Context) -> None:
            handled[who].append(event.id)

        return record

    bus_a, sources_a = consumer(bootstrap, topic, group, HandlerRegistry(), grace_s=1.0)
    bus_b, sources_b = consumer(bootstrap, topic, group, HandlerRegistry(), grace_s=1.0)
    bus_a.subscribe("order.*", recorder("a"), name="a")
    bus_b.subscribe("order.*", recorder("b"), name="b")
    first = [sample(id=f"a{i}", key=f"k{i}") for i in range(40)]
    second = [sample(id=f"b{i}", key=f"k{i}") for i in range(40)]
    async with publisher(bootstrap, topic) as out:
        assert {r.status for r in await out.emit_many(first)} == {"published"}
        async with bus_a, sources_a, bus_b:
            await wait_until(lambda: assignment(sources_a) == all_tps, timeout=TIMEOUT,
                             what="a alone has every partition")  # fmt: skip
            await sources_b.start()
            try:
                await wait_until(
                    lambda: assignment(sources_a) and assignment(sources_b)
                    and assignment(sources_a) | assignment(sources_b) == all_tps
                    and not assignment(sources_a) & assignment(sources_b),
                    timeout=TIMEOUT, what="the partitions split between a and b",
                )  # fmt: skip
                await wait_until(
                    lambda: {*handled["a"], *handled["b"]} >= {e.id for e in first},
                    timeout=TIMEOUT, what="the first 40 handled",
                )  # fmt: skip
                await sources_a.stop()
                await wait_until(lambda: assignment(sources_b) == all_tps, timeout=TIMEOUT,
                                 what="b takes over a's partitions")  # fmt: skip
                assert {r.status for r in await out.emit_many(second)} == {"published"}
                await wait_until(lambda: set(handled["b"]) >= {e.id for e in second},
                                 timeout=TIMEOUT, what="b handles the second 40")  # fmt: skip
            finally:
                await sources_b.stop()
    assert not {e.id for e in second} & set(handled["a"])  # a had stopped
    assert handled["a"]  # a had partitions of its own before b joined
    revoked = [r.getMessage() for r in caplog.records if "partitions revoked" in r.getMessage()]
    assert revoked  # the listener ran: a gave partitions up to b (and b at its stop)


async def test_a_revocation_commits_what_finished_in_grace_and_leaves_the_rest(
    kafka_broker: KafkaBroker,
) -> None:
    """Per partition, ``fin`` finishes once the revocation has begun (within grace_s) and
    ``stuck`` never does: after the rebalance, whoever owns a partition consumes its
    ``stuck`` again and never its ``fin``."""
    bootstrap = kafka_broker.bootstrap
    topic = await create_topic(bootstrap, unique_name("src-kg"), 2)
    group = unique_name("g")
    revoking = asyncio.Event()
    seen: dict[str, list[str]] = {"a": [], "b": []}

    async def a_work(event: Event, ctx: Context) -> None:
        assert isinstance(event.data, dict)
        name = event.data["name"]
        seen["a"].append(name)
        if name.startswith("fin"):
            await revoking.wait()
        else:
            await asyncio.Event().wait()  # stuck: cancelled when abandoned

    bus_a, sources_a = consumer(bootstrap, topic, group, HandlerRegistry(), order="key",
                                grace_s=1.0)  # fmt: skip
    bus_b, sources_b = consumer(bootstrap, topic, group, HandlerRegistry(), grace_s=0.2)
    bus_a.subscribe("*", a_work, name="a", timeout=120)
    bus_b.subscribe("*", lambda e, c: seen["b"].append(e.data["name"]), name="b")  # type: ignore[index]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for p in (0, 1):
            for name in (f"fin-{p}", f"stuck-{p}"):
                body = json.dumps({"name": name}).encode()
                await producer.send_and_wait(topic, body, key=name[:3].encode(), partition=p)
    finally:
        await producer.stop()
    async with bus_a, sources_a, bus_b:
        await wait_until(lambda: len(seen["a"]) == 4, timeout=TIMEOUT, what="a has all four")
        flow: Any = sources_a.sources["in"]._supervisor.current().flow  # type: ignore[attr-defined]
        revoke = flow.revoke

        async def revoke_and_signal(tps: Any, grace_s: float) -> None:
            revoking.set()
            await revoke(tps, grace_s)

        flow.revoke = revoke_and_signal
        await sources_b.start()
        try:
            await wait_until(
                lambda: assignment(sources_a) and assignment(sources_b),
                timeout=TIMEOUT, what="the partitions split between a and b",
            )  # fmt: skip
            [b_part] = [tp.partition for tp in assignment(sources_b)]
            await wait_until(lambda: f"stuck-{b_part}" in seen["b"], timeout=TIMEOUT,
                             what="b consumes the abandoned record")  # fmt: skip
            [a_part] = [tp.partition for tp in assignment(sources_a)]
            await wait_until(lambda: seen["a"].count(f"stuck-{a_part}") == 2, timeout=TIMEOUT,
                             what="a consumes its own abandoned record again")  # fmt: skip
        finally:
            await sources_b.stop()
            await sources_a.stop()
    assert seen["b"] == [f"stuck-{b_part}"]  # its fin was committed at the revocation
    assert sorted(n for n in seen["a"] if n.startswith("fin")) == ["fin-0", "fin-1"]  # once
    # a fetched its stuck record before the rebalance gave the partition back: counted as
    # redelivered there. b had never fetched its stuck record: new to it, not counted.
    assert redeliveries(bus_a) == 1
    assert redeliveries(bus_b) == 0


def redeliveries(bus: Bus) -> float:
    return bus.metrics.consumed_again.labels("in")._value.get()  # type: ignore[attr-defined,no-any-return]
