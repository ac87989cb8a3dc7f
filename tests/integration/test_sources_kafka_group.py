"""Two Kafka sources (two bridge instances) sharing one consumer group on a Tansu
broker: the partitions are split between them, and move to the one left when the
other stops; the revoked partitions' done records are committed first, so every
record is handled (at least once) across the two."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiokafka import TopicPartition  # type: ignore[import-untyped]

from bridge import Context, Event
from bridge.handlers import HandlerRegistry
from bridge.sources import Sources
from tests.brokers import KafkaBroker, create_topic, unique_name, wait_until
from tests.integration.test_sources_kafka import consumer, publisher, sample

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
