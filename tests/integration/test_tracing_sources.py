"""Traces of consumed messages: a CONSUMER span per message, continuing the trace from the
message's ``traceparent``, with the event span (and its handler spans) nested under it.

Real brokers (the machine's NATS JetStream and RabbitMQ), each test with its own stream
or queue (``unique_name``), deleted afterwards; spans read from the SDK's in-memory
exporter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import nats
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from bridge import Bus, Context, Event, tracing
from bridge.config import TracingConfig
from bridge.handlers import HandlerRegistry
from bridge.sources import Sources
from tests.brokers import RabbitMQ, unique_name
from tests.integration.source_support import QUICK, source_bus, until_consumed
from tests.nats_broker import add_stream, delete_stream, nats_url

__all__ = ["nats_url"]

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.setup(TracingConfig(enabled=True), {}, processor=SimpleSpanProcessor(exporter))
    yield exporter
    tracing.shutdown()


def consumer(registry: HandlerRegistry, **source: Any) -> tuple[Bus, Sources]:
    return source_bus(registry, {**QUICK, **source})


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    """The spans by name, the consume span as ``consume`` (its name, ``process
    <destination>``, may be the event span's, ``process <type>``)."""
    found = {}
    for span in exporter.get_finished_spans():
        found["consume" if span.kind == SpanKind.CONSUMER else span.name] = span
    return found


def check_tree(found: dict[str, ReadableSpan], destination: str, event_type: str) -> None:
    """consume (child of the message's traceparent) > event > handler, one trace."""
    consume = found["consume"]
    assert consume.name == f"process {destination}"
    event = found[f"process {event_type}"]
    handler = found["handler record"]
    assert consume.kind == SpanKind.CONSUMER
    assert consume.parent is not None
    assert consume.context is not None
    assert format(consume.parent.span_id, "016x") == CLIENT_SPAN
    assert format(consume.context.trace_id, "032x") == CLIENT_TRACE
    assert event.parent is not None
    assert event.parent.span_id == consume.context.span_id
    assert event.context is not None
    assert handler.parent is not None
    assert handler.parent.span_id == event.context.span_id
    assert {s.context.trace_id for s in (consume, event, handler) if s.context} == {
        consume.context.trace_id
    }


async def test_a_nats_message_gets_a_consume_span_continuing_its_traceparent(
    nats_url: str, registry: HandlerRegistry, spans: InMemorySpanExporter
) -> None:
    prefix = unique_name("trace").replace("-", "_")
    stream = prefix.upper()
    subject = f"{prefix}.in.orders"
    await add_stream(nats_url, [f"{prefix}.in.>"], name=stream)
    seen: list[Event] = []
    try:
        bus, sources = consumer(registry, type="nats", servers=nats_url, stream=stream,
                                durable="evbridge", fetch_wait_s=0.2)  # fmt: skip
        bus.subscribe(subject, lambda event, ctx: seen.append(event), name="record")
        nc = await nats.connect(nats_url)
        try:
            ack = await nc.jetstream().publish(
                subject, b'{"id": 7}', headers={"traceparent": TRACEPARENT}
            )
        finally:
            await nc.close()
        async with bus, sources:
            await until_consumed(bus, 1)
    finally:
        await delete_stream(nats_url, stream)
    found = by_name(spans)
    check_tree(found, subject, subject)
    attributes = found["consume"].attributes
    assert attributes is not None
    assert attributes["messaging.system"] == "nats"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == subject
    assert attributes["messaging.consumer.group.name"] == "evbridge"
    assert attributes["evbridge.nats.stream_sequence"] == ack.seq
    assert attributes["evbridge.source.verdict"] == "ack"
    # What the handler saw carries the event span, not the producer's parent.
    [event] = seen
    assert event.headers["traceparent"].split("-")[1] == CLIENT_TRACE
    assert event.headers["traceparent"].split("-")[2] != CLIENT_SPAN


@pytest.fixture
async def queue(rabbitmq: RabbitMQ) -> AsyncIterator[str]:
    """A queue of the test's own, declared before the source starts (so a message
    published at once is not dropped), deleted after."""
    name = unique_name("trace-q")
    async with await aio_pika.connect(rabbitmq.url) as connection:
        channel = await connection.channel()
        await channel.declare_queue(name, durable=True)
        yield name
        await channel.queue_delete(name)


async def test_a_rabbitmq_message_whose_handler_fails_gets_a_failed_consume_span(
    rabbitmq: RabbitMQ, queue: str, registry: HandlerRegistry, spans: InMemorySpanExporter
) -> None:
    bus, sources = consumer(registry, type="rabbitmq", url=rabbitmq.url, queue=queue,
                            on_error="dead_letter")  # fmt: skip

    def record(event: Event, ctx: Context) -> None:
        raise RuntimeError("refused")

    bus.subscribe(queue, record, name="record")
    async with bus, sources:
        async with await aio_pika.connect(rabbitmq.url) as connection:
            channel = await connection.channel()
            message = aio_pika.Message(b'{"id": 8}', headers={"traceparent": TRACEPARENT})
            await channel.default_exchange.publish(message, routing_key=queue)
        await until_consumed(bus, 1, "dead_letter")
    found = by_name(spans)
    check_tree(found, queue, queue)
    consume = found["consume"]
    assert consume.attributes is not None
    assert consume.attributes["messaging.system"] == "rabbitmq"
    assert consume.attributes["messaging.destination.name"] == queue
    assert consume.attributes["messaging.rabbitmq.message.delivery_tag"] == 1
    assert consume.attributes["evbridge.source.verdict"] == "dead_letter"
    assert consume.status.status_code == StatusCode.ERROR
    assert found["handler record"].status.status_code == StatusCode.ERROR


async def test_with_tracing_off_a_consumed_message_makes_no_span(
    rabbitmq: RabbitMQ, queue: str, registry: HandlerRegistry
) -> None:
    assert tracing.TRACER is None
    bus, sources = consumer(registry, type="rabbitmq", url=rabbitmq.url, queue=queue)
    seen: list[Event] = []
    bus.subscribe(queue, lambda event, ctx: seen.append(event), name="record")
    async with bus, sources:
        async with await aio_pika.connect(rabbitmq.url) as connection:
            channel = await connection.channel()
            message = aio_pika.Message(b"{}", headers={"traceparent": TRACEPARENT})
            await channel.default_exchange.publish(message, routing_key=queue)
        await until_consumed(bus, 1)
    # The message's traceparent reaches the handler untouched: no span was made.
    assert seen[0].headers["traceparent"] == TRACEPARENT
