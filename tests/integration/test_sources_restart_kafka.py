"""The Kafka source through a restart of a noida-db broker of the test's own (``noida_broker``,
tests/brokers.py: a data dir that survives the restart). noida persists asynchronously, so
the broker is stopped gracefully (SIGINT, and it is given time to save): the backlog and
the committed offsets are on disk before it goes. The source reconnects by itself and
every record is handled at least once. The scenario is in restart_support.py."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

from tests.brokers import NoidaBroker, create_topic, unique_name
from tests.integration.restart_support import Consumer, restart_under_backlog

pytestmark = pytest.mark.slow

BACKLOG = 300
PARTITIONS = 2


async def test_the_source_reconnects_after_a_restart_and_loses_nothing(
    noida_broker: NoidaBroker,
) -> None:
    broker = noida_broker
    topic = await create_topic(broker.bootstrap, unique_name("restart"), partitions=PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(BACKLOG):
            await producer.send(topic, b'{"n": %d}' % i, partition=i % PARTITIONS)
        await producer.flush()
    finally:
        await producer.stop()
    group = unique_name("restart")
    consumer = Consumer(
        {"type": "kafka", "bootstrap_servers": broker.bootstrap, "group_id": group,
         "topics": [topic], "concurrency": 16, "fetch_wait_s": 0.2, "reconnect_max_s": 0.3,
         "probe_interval_s": 0.5, "connect_timeout_s": 10},
    )  # fmt: skip

    async def settled() -> bool:
        # Every partition's committed offset is its end: each record was committed past.
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        committed = sorted(o.offset for tp, o in offsets.items() if tp.topic == topic)
        return committed == [BACKLOG // PARTITIONS] * PARTITIONS

    await consumer.sidecar.start()
    try:
        await restart_under_backlog(
            consumer, BACKLOG, broker.stop, broker.start, settled, in_flight_comes_again=False
        )
    finally:
        await consumer.sidecar.stop(10)
