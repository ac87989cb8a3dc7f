"""Contract target for the RabbitMQ sink: a per-test exchange with one bound durable queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import aio_pika
import pytest

from bridge.sinks.base import RouteOptions
from bridge.sinks.rabbitmq import RabbitConfig, RabbitRoute, RabbitSink
from tests.brokers import RabbitMQ, unique_name
from tests.contract.target import Received


class RabbitTarget:
    """The sink publishes to ``exchange`` (topic); ``queue`` is bound to it with ``#``."""

    positions = False  # AMQP confirms carry no position in the queue

    def __init__(self, broker: RabbitMQ, exchange: str, queue: aio_pika.abc.AbstractQueue) -> None:
        self.exchange = exchange
        self.queue = queue
        self.sink = RabbitSink(
            RabbitConfig(
                name="rabbit", type="rabbitmq", url=broker.url, exchange=exchange, channels=2
            )
        )

    def route(self) -> RouteOptions:
        return RabbitRoute(exchange=self.exchange)

    async def read(self, route: RouteOptions, n: int, timeout: float = 15.0) -> Sequence[Received]:
        assert isinstance(route, RabbitRoute)
        return [
            Received(
                m.message_id or "",
                m.type or "",
                m.body,
                _text(m.headers.get("cloudEvents:partitionkey")),
            )
            for m in await get_messages(self.queue, n, timeout)
        ]


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode()
    return None if value is None else str(value)


async def get_messages(
    queue: aio_pika.abc.AbstractQueue,
    n: int,
    timeout: float = 15.0,
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Consume ``n`` messages from ``queue`` (acking them), in queue order, with a deadline."""
    got: list[aio_pika.abc.AbstractIncomingMessage] = []
    try:
        async with asyncio.timeout(timeout), queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                got.append(message)
                if len(got) >= n:
                    break
    except TimeoutError:
        raise AssertionError(
            f"got {len(got)} of {n} messages from {queue.name} in {timeout:g}s"
        ) from None
    return got


@pytest.fixture
async def target_rabbitmq(rabbitmq: RabbitMQ) -> AsyncIterator[RabbitTarget]:
    name = unique_name("contract")
    # The test side's own connection, for setup and reading back (not the sink's).
    async with await aio_pika.connect(rabbitmq.url) as connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(name, durable=True)
        await queue.bind(exchange, routing_key="#")
        target = RabbitTarget(rabbitmq, name, queue)
        await target.sink.start()
        try:
            yield target
        finally:
            await target.sink.stop()
            await queue.delete(if_unused=False, if_empty=False)
            await exchange.delete()
