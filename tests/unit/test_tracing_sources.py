"""The consume span of a source's message (`bridge.spans.start_consume`), through the
runner with the SDK's in-memory exporter; the brokers' own tests are in
tests/integration/test_tracing_sources.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from bridge import Bus, Context, Event, parse_config, tracing
from bridge.config import TracingConfig
from bridge.handlers import HandlerRegistry
from bridge.metrics import Metrics
from bridge.sources.base import Incoming, Verdict
from bridge.sources.kafka import KafkaSourceConfig
from bridge.sources.runner import Runner

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
KAFKA = {"name": "in", "type": "kafka", "bootstrap_servers": "127.0.0.1:1", "group_id": "g1",
         "topics": ["orders"], "retry_initial_s": 0.001}  # fmt: skip


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.setup(TracingConfig(enabled=True), {}, processor=SimpleSpanProcessor(exporter))
    yield exporter
    tracing.shutdown()


def runner(bus: Bus, **fields: Any) -> Runner:
    return Runner(bus, msgspec.convert({**KAFKA, **fields}, KafkaSourceConfig))


def bus_with(registry: HandlerRegistry) -> Bus:
    config = parse_config({"handlers": {"entry_points": False}}, {})
    return Bus(config, registry=registry, metrics=Metrics())


def record(event: Event | None = None, problem: str | None = None) -> Incoming:
    return Incoming("topic 'orders' partition 3 offset 41", event=event, problem=problem,
                    destination="orders", partition=3, offset=41)  # fmt: skip


def consume_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    [span] = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    return span


async def test_a_kafka_record_gets_a_consume_span_with_its_offset(
    registry: HandlerRegistry, spans: InMemorySpanExporter
) -> None:
    bus = bus_with(registry)
    bus.subscribe("orders", lambda event, ctx: None, name="noop")
    event = Event(type="orders", id="e1", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    async with bus:
        verdict = await runner(bus, route=False).deliver(record(event))
    assert verdict == Verdict("ack")
    consume = consume_span(spans)
    assert consume.name == "process orders"
    assert consume.parent is not None
    assert format(consume.parent.span_id, "016x") == PARENT
    assert dict(consume.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "orders",
        "messaging.destination.partition.id": "3",
        "messaging.kafka.offset": 41,
        "messaging.consumer.group.name": "g1",
        "messaging.message.id": "e1",
        "evbridge.source": "in",
        "evbridge.source.verdict": "ack",
    }
    assert consume.status.status_code == StatusCode.UNSET


async def test_each_retry_is_an_event_span_under_the_one_consume_span(
    registry: HandlerRegistry, spans: InMemorySpanExporter
) -> None:
    bus = bus_with(registry)

    def fail(event: Event, ctx: Context) -> None:
        raise RuntimeError("down")

    bus.subscribe("orders", fail, name="fail")
    async with bus:
        verdict = await runner(bus, route=False, on_error="retry", max_attempts=3).deliver(
            record(Event(type="orders"))
        )
    assert verdict.action == "dead_letter"
    consume = consume_span(spans)
    assert consume.context is not None
    assert consume.parent is None  # no traceparent on the message: a new trace
    events = [s for s in spans.get_finished_spans() if s.name == "process orders" and s != consume]
    assert len(events) == 3
    assert {s.parent.span_id for s in events if s.parent} == {consume.context.span_id}
    assert consume.status.status_code == StatusCode.ERROR
    assert consume.status.description is not None
    assert "after 3 run(s)" in consume.status.description


async def test_an_undecodable_record_gets_a_failed_consume_span(
    registry: HandlerRegistry, spans: InMemorySpanExporter
) -> None:
    bus = bus_with(registry)
    async with bus:
        verdict = await runner(bus).deliver(record(problem="body is not JSON"))
    assert verdict.action == "dead_letter"
    consume = consume_span(spans)
    assert consume.attributes is not None
    assert consume.attributes["evbridge.source.verdict"] == "dead_letter"
    assert "messaging.message.id" not in consume.attributes
    assert consume.status.status_code == StatusCode.ERROR
    assert [s.name for s in spans.get_finished_spans()] == ["process orders"]
