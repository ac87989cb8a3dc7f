"""The RabbitMQ source through restarts of the tests' own RabbitMQ node (``private_rabbitmq``,
tests/brokers.py; the machine's node is never touched): under a backlog the node's app is
stopped and started (``stop_app``/``start_app``) or the whole node is (``stop``/``start``);
the source reconnects by itself and every message is handled at least once. The scenario
is in restart_support.py. Marked ``slow``: the node's restart is most of the time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aio_pika
import pytest

from tests.brokers import RabbitMQ, RabbitMQNode, unique_name
from tests.integration.restart_support import Consumer, restart_under_backlog

pytestmark = pytest.mark.slow

BACKLOG = 300


@pytest.fixture
async def queue(private_rabbitmq: RabbitMQNode) -> AsyncIterator[str]:
    """A durable queue on the private node holding ``BACKLOG`` persistent messages."""
    name = unique_name("src-restart")
    async with await aio_pika.connect(private_rabbitmq.url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(name, durable=True)
        # Confirmed before the test begins: persistent, so they survive the restart too.
        await asyncio.gather(
            *(
                channel.default_exchange.publish(
                    aio_pika.Message(
                        b'{"n": %d}' % i,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=name,
                )
                for i in range(BACKLOG)
            )
        )
    try:
        yield name
    finally:
        private_rabbitmq.restore()
        async with await aio_pika.connect(private_rabbitmq.url) as connection:
            await (await connection.channel()).queue_delete(name)


async def ready_count(node: RabbitMQNode, queue: str) -> int | None:
    async with await aio_pika.connect(node.url) as connection:
        declared = await (await connection.channel()).declare_queue(queue, passive=True)
        count: int | None = declared.declaration_result.message_count
        return count


@pytest.mark.parametrize("how", ["app", "node"])
async def test_the_source_reconnects_after_a_restart_and_loses_nothing(
    private_rabbitmq: RabbitMQNode, rabbitmq: RabbitMQ, queue: str, how: str
) -> None:
    node = private_rabbitmq
    consumer = Consumer(
        {"type": "rabbitmq", "url": node.url, "queue": queue, "prefetch": 16,
         "reconnect_max_s": 0.3, "probe_interval_s": 0.5, "heartbeat_s": 2},
    )  # fmt: skip

    async def take_down() -> None:
        await (node.stop_app() if how == "app" else node.stop())
        assert await rabbitmq.answers(), "only the private node went down"

    async def bring_up() -> None:
        await (node.start_app() if how == "app" else node.start())

    async def settled() -> bool:
        # Nothing ready, and nothing in flight (that is, delivered and not acked yet).
        return consumer.inflight() == 0 and await ready_count(node, queue) == 0

    await consumer.sidecar.start()
    try:
        await restart_under_backlog(consumer, BACKLOG, take_down, bring_up, settled)
    finally:
        await consumer.sidecar.stop(10)
    assert await ready_count(node, queue) == 0, "nothing was left unacked"
