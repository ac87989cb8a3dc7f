"""Traces against a real broker: the AMQP message carries the publish span's traceparent."""

from __future__ import annotations

from collections.abc import Iterator

import aio_pika
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from bridge import tracing
from bridge.config import TracingConfig
from bridge.delivery import Publisher
from bridge.event import Event
from bridge.results import Delivery
from bridge.sinks.base import Outgoing
from bridge.sinks.rabbitmq import RabbitConfig, RabbitRoute, RabbitSink
from tests.brokers import RabbitMQ, unique_name
from tests.contract.target_rabbitmq import get_messages

CLIENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.setup(TracingConfig(enabled=True), {}, processor=SimpleSpanProcessor(exporter))
    yield exporter
    tracing.shutdown()


async def test_the_message_continues_the_trace_from_the_publish_span(
    rabbitmq: RabbitMQ, spans: InMemorySpanExporter
) -> None:
    name = unique_name("rmq-trace")
    async with await aio_pika.connect(rabbitmq.url) as connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(name, durable=True)
        await queue.bind(exchange, routing_key="#")
        sink = RabbitSink(RabbitConfig(name="rmq", type="rabbitmq", url=rabbitmq.url))
        await sink.start()
        try:
            event = Event(type="invite.sent", source="/tests", headers={"traceparent": CLIENT})
            route = RabbitRoute(exchange=name, routing_key="invites.sent")
            publisher = Publisher(sink, coalesce=False)
            [result] = await publisher.publish_many([Outgoing(event, "r", route, None)])
            assert isinstance(result, Delivery)
            [message] = await get_messages(queue, 1)
        finally:
            await sink.stop()
            await queue.delete(if_unused=False, if_empty=False)
            await exchange.delete()
    [send] = spans.get_finished_spans()
    assert send.kind == SpanKind.PRODUCER
    assert send.context is not None
    assert send.parent is not None
    assert send.parent.span_id == int(CLIENT.split("-")[2], 16)
    assert send.attributes is not None
    assert send.attributes["messaging.system"] == "rabbitmq"
    assert send.attributes["messaging.destination.name"] == name
    assert send.attributes["messaging.rabbitmq.destination.routing_key"] == "invites.sent"
    context = send.context
    expected = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    assert message.headers is not None
    assert message.headers["traceparent"] == expected
    assert event.headers == {"traceparent": CLIENT}  # the caller's event is left alone
