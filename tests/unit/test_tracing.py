"""Traces (`bridge.tracing`): the span tree of an event, read from the SDK's in-memory exporter."""

from __future__ import annotations

import ast
import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from bridge import Bus, Context, Event, parse_config, tracing
from bridge.config import Config, TracingConfig
from bridge.errors import SinkError, SinkUnavailable
from bridge.handlers import HandlerRegistry
from bridge.results import Delivery
from bridge.server import SIDECAR, standalone_app
from bridge.sinks.base import (
    Health,
    Outgoing,
    RouteOptions,
    SinkConfig,
    SinkType,
    register_sink_type,
)
from bridge.sinks.memory import MemorySink
from tests.brokers import wait_until

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


class FlakyConfig(SinkConfig, frozen=True, kw_only=True):
    pass


class FlakyRoute(RouteOptions, frozen=True, kw_only=True):
    def destination(self, sink: str) -> str:
        return "flaky-topic"


class FlakySink:
    """Fails (retriably) the first ``failures`` publish calls, then confirms."""

    def __init__(self, config: SinkConfig) -> None:
        self.name = config.name
        self.failures = 1
        self.published: list[Outgoing] = []

    async def start(self) -> None:
        pass

    async def publish_many(self, items: Sequence[Outgoing]) -> list[Delivery | SinkError]:
        if self.failures > 0:
            self.failures -= 1
            return [SinkUnavailable("broker away")] * len(items)
        self.published.extend(items)
        return [Delivery(self.name, "flaky-topic", 2, 41) for _ in items]

    async def healthcheck(self) -> Health:
        return Health(ok=True)

    async def stop(self) -> None:
        pass


register_sink_type(SinkType("flaky", FlakyConfig, FlakyRoute, FlakySink))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.setup(TracingConfig(enabled=True), {}, processor=SimpleSpanProcessor(exporter))
    yield exporter
    tracing.shutdown()


def config(**extra: Any) -> Config:
    raw: dict[str, Any] = {
        "sinks": [{"name": "mem", "type": "memory"}],
        "routes": [{"name": "all", "match": "*", "sink": "mem"}],
        "handlers": {"entry_points": False},
        **extra,
    }
    return parse_config(raw, {})


def named(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


def one(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(found) == 1, f"{name}: {[s.name for s in exporter.get_finished_spans()]}"
    return found[0]


def child_of(span: ReadableSpan, parent: ReadableSpan) -> bool:
    assert span.parent is not None
    assert parent.context is not None
    return span.parent.span_id == parent.context.span_id


def traceparent_of(span: ReadableSpan) -> str:
    assert span.context is not None
    context = span.context
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def test_off_unless_asked_for() -> None:
    off = TracingConfig()
    assert not tracing.wanted(off, {})
    assert tracing.wanted(TracingConfig(enabled=True), {})
    assert tracing.wanted(off, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted(off, {"OTEL_SERVICE_NAME": "checkout-bridge"})
    assert not tracing.wanted(TracingConfig(enabled=True), {"OTEL_SDK_DISABLED": "true"})
    assert not tracing.wanted(off, {"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_EXPORTER": "none"})
    assert tracing.setup(off, {}) is False
    assert tracing.TRACER is None


def test_config_section_and_env_override() -> None:
    parsed = parse_config({"tracing": {"enabled": True, "sampler_ratio": 0.01}}, {})
    assert parsed.tracing == TracingConfig(enabled=True, sampler_ratio=0.01)
    from_env = parse_config({}, {"EVBRIDGE_TRACING_ENDPOINT": "http://otel:4318"})
    assert from_env.tracing.endpoint == "http://otel:4318"
    with pytest.raises(Exception, match="sampler_ratio"):
        parse_config({"tracing": {"sampler_ratio": 2}}, {})


async def test_single_event_span_tree(spans: InMemorySpanExporter) -> None:
    app = standalone_app(config())
    bus = app[SIDECAR].bus
    seen_threads: list[str] = []

    async def audit(event: Event, ctx: Context) -> None:
        assert tracing.TRACER is not None
        with tracing.TRACER.start_as_current_span("app audit"):
            await asyncio.sleep(0)

    def blocking(event: Event) -> None:
        # A plain def handler, in a handler thread: its span nests all the same.
        assert tracing.TRACER is not None
        with tracing.TRACER.start_as_current_span("app blocking"):
            seen_threads.append("ran")

    bus.subscribe("order.*", audit, name="audit")
    bus.subscribe("order.*", blocking, name="blocking")
    async with TestClient(TestServer(app)) as client:
        response = await client.post(
            "/v1/events",
            json={"type": "order.created", "id": "o-1", "data": {"n": 1}},
            headers={"traceparent": TRACEPARENT},
        )
        assert response.status == 200, await response.text()
        sink = bus.sinks["mem"]
        assert isinstance(sink, MemorySink)
        published = sink.items[0].event
    assert seen_threads == ["ran"]
    request = one(spans, "POST /v1/events")
    event = one(spans, "process order.created")
    audit_span, blocking_span = one(spans, "handler audit"), one(spans, "handler blocking")
    send = one(spans, "send mem")
    assert request.kind == SpanKind.SERVER
    assert request.parent is not None
    assert request.parent.span_id == int(CLIENT_SPAN, 16)
    assert request.context is not None
    assert request.context.trace_id == int(CLIENT_TRACE, 16)
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 200
    assert child_of(event, request)
    assert child_of(audit_span, event)
    assert child_of(blocking_span, event)
    assert child_of(one(spans, "app audit"), audit_span)
    assert child_of(one(spans, "app blocking"), blocking_span)
    assert audit_span.attributes is not None
    assert audit_span.attributes["evbridge.handler.outcome"] == "ok"
    assert child_of(send, event)
    assert send.kind == SpanKind.PRODUCER
    assert send.attributes is not None
    assert send.attributes["messaging.system"] == "memory"
    assert send.attributes["messaging.destination.name"] == "mem"
    assert send.attributes["messaging.kafka.offset"] == 0
    assert send.attributes["messaging.destination.partition.id"] == "0"
    assert send.attributes["messaging.message.id"] == "o-1"
    # What the broker got continues the trace from the publish span.
    assert published.headers["traceparent"] == traceparent_of(send)


async def test_batch_events_get_a_span_each_linked_to_the_request(
    spans: InMemorySpanExporter,
) -> None:
    app = standalone_app(config())
    async with TestClient(TestServer(app)) as client:
        response = await client.post(
            "/v1/events/batch",
            json=[{"type": "b.x", "id": f"b{i}"} for i in range(3)],
            headers={"traceparent": TRACEPARENT},
        )
        assert response.status == 200, await response.text()
    request = one(spans, "POST /v1/events/batch")
    assert request.context is not None
    events = named(spans, "process b.x")
    sends = named(spans, "send mem")
    assert len(events) == 3
    assert len(sends) == 3
    for event in events:
        assert [link.context.span_id for link in event.links] == [request.context.span_id]
        # The request's traceparent is the batch's: each event continues the client's trace.
        assert event.parent is not None
        assert event.parent.span_id == int(CLIENT_SPAN, 16)
        assert sum(child_of(send, event) for send in sends) == 1
    ids = {e.attributes["messaging.message.id"] for e in events if e.attributes is not None}
    assert ids == {"b0", "b1", "b2"}


async def test_failing_handler_span_records_the_error(
    spans: InMemorySpanExporter, registry: HandlerRegistry
) -> None:
    bus = Bus(config(), registry=registry)

    async def broken(event: Event, ctx: Context) -> None:
        raise ValueError("no stock for sku-9")

    bus.subscribe("order.*", broken, name="broken")
    async with bus:
        result = await bus.emit(Event(type="order.placed"))
    assert result.handlers[0].outcome == "error"
    handler = one(spans, "handler broken")
    assert handler.status.status_code == StatusCode.ERROR
    assert handler.attributes is not None
    assert handler.attributes["evbridge.handler.outcome"] == "error"
    assert [e.name for e in handler.events] == ["exception"]
    assert handler.events[0].attributes is not None
    assert handler.events[0].attributes["exception.message"] == "no stock for sku-9"
    assert child_of(handler, one(spans, "process order.placed"))


async def test_durable_event_delivered_after_a_retry(
    spans: InMemorySpanExporter, registry: HandlerRegistry, tmp_path: Path
) -> None:
    durable = config(
        sinks=[{"name": "f", "type": "flaky"}],
        routes=[{"name": "all", "match": "*", "sink": "f"}],
        delivery={
            "mode": "durable",
            "spool_dir": str(tmp_path / "spool"),
            "retry": {"initial_s": 0.01, "max_s": 0.02},
        },
        shutdown={"grace_s": 0.5},
    )
    async with Bus(durable, registry=registry) as bus:
        sink = bus.sinks["f"]
        assert isinstance(sink, FlakySink)
        result = await bus.emit(Event(type="pay.done", id="p-1"))
        assert result.status == "spooled"
        await wait_until(lambda: bool(sink.published), timeout=5, what="delivery")
        await wait_until(lambda: len(named(spans, "deliver f")) == 2, timeout=5, what="spans")
    event = one(spans, "process pay.done")
    write = one(spans, "spool write f")
    assert child_of(write, event)
    first, second = sorted(named(spans, "deliver f"), key=lambda s: s.start_time or 0)
    assert child_of(first, event)
    assert child_of(second, event)
    assert first.attributes is not None
    assert second.attributes is not None
    assert first.attributes["evbridge.delivery.attempt"] == 1
    assert second.attributes["evbridge.delivery.attempt"] == 2
    assert first.status.status_code == StatusCode.ERROR
    assert first.attributes["error.type"] == "sink_unavailable"
    assert second.status.status_code == StatusCode.UNSET
    sends = named(spans, "send flaky-topic")
    assert len(sends) == 2
    assert {child_of(s, first) for s in sends} == {True, False}
    delivered = next(s for s in sends if child_of(s, second))
    assert delivered.attributes is not None
    assert delivered.attributes["messaging.kafka.offset"] == 41
    assert sink.published[0].event.headers["traceparent"] == traceparent_of(delivered)


async def test_exemplars_on_the_duration_histograms_over_openmetrics(
    spans: InMemorySpanExporter,
) -> None:
    app = standalone_app(config())
    bus = app[SIDECAR].bus

    async def quick(event: Event, ctx: Context) -> None:
        pass

    bus.subscribe("ex.*", quick, name="exemplar-handler")
    async with TestClient(TestServer(app)) as client:
        response = await client.post("/v1/events", json={"type": "ex.x"})
        assert response.status == 200
        handler = one(spans, "handler exemplar-handler")
        assert handler.context is not None
        trace_id = f"{handler.context.trace_id:032x}"
        scrape = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        text = await scrape.text()
        plain = await (await client.get("/metrics")).text()
    assert scrape.headers["Content-Type"].startswith("application/openmetrics-text")

    def bucket_lines(metric: str, label: str) -> list[str]:
        return [
            line
            for line in text.splitlines()
            if line.startswith(f"{metric}_bucket{{") and label in line
        ]

    handler_lines = bucket_lines("evbridge_handler_duration_seconds", 'handler="exemplar-handler"')
    assert any(f'# {{trace_id="{trace_id}"}}' in line for line in handler_lines), handler_lines
    publish_lines = bucket_lines("evbridge_publish_duration_seconds", 'sink="mem"')
    assert any("# {trace_id=" in line for line in publish_lines), publish_lines
    assert "trace_id" not in plain


async def test_tracing_off_leaves_the_event_untouched(registry: HandlerRegistry) -> None:
    assert tracing.TRACER is None
    bus = Bus(config(), registry=registry)
    async with bus:
        await bus.emit(Event(type="t.off", headers={"traceparent": TRACEPARENT}))
    sink = bus.sinks["mem"]
    assert isinstance(sink, MemorySink)
    assert sink.items[0].event.headers == {"traceparent": TRACEPARENT}


def test_the_bridge_runs_without_opentelemetry_installed() -> None:
    # A fresh interpreter in which every opentelemetry import fails, as without the extra.
    script = """
import asyncio, sys

class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Missing())
from bridge import Bus, Event, parse_config, tracing
from bridge.config import TracingConfig
from bridge.errors import ConfigError
from bridge.handlers import HandlerRegistry
from bridge.server import standalone_app

config = parse_config({"sinks": [{"name": "mem", "type": "memory"}],
    "routes": [{"name": "all", "match": "*", "sink": "mem"}],
    "handlers": {"entry_points": False}}, {})
standalone_app(config)

async def main():
    async with Bus(config, registry=HandlerRegistry()) as bus:
        return (await bus.emit(Event(type="t.x"))).status

assert asyncio.run(main()) == "published"
assert not tracing.setup(TracingConfig(), {})
try:
    tracing.setup(TracingConfig(enabled=True), {})
except ConfigError as exc:
    assert exc.field == "tracing.enabled", exc.field
    print("refused:", exc.message)
assert not any(name.startswith("opentelemetry") for name in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "refused: tracing.enabled: tracing was asked for" in done.stdout
    assert "evbridge[otel]" in done.stdout


async def test_sampled_out_events_record_nothing_and_still_propagate(
    registry: HandlerRegistry,
) -> None:
    exporter = InMemorySpanExporter()
    assert tracing.setup(
        TracingConfig(enabled=True, sampler_ratio=0.0), {}, processor=SimpleSpanProcessor(exporter)
    )
    try:
        bus = Bus(config(), registry=registry)

        async def handler(event: Event, ctx: Context) -> None:
            pass

        bus.subscribe("s.*", handler, name="h")
        unsampled = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"
        async with bus:
            await bus.emit(Event(type="s.new"))
            await bus.emit(Event(type="s.cont", headers={"traceparent": unsampled}))
            # A sampled parent is followed whatever the ratio (parent-based sampler).
            await bus.emit(Event(type="s.sampled", headers={"traceparent": TRACEPARENT}))
    finally:
        tracing.shutdown()
    sink = bus.sinks["mem"]
    assert isinstance(sink, MemorySink)
    fresh, continued, sampled = (item.event.headers["traceparent"] for item in sink.items)
    assert not int(fresh[-2:], 16) & 1  # not sampled
    assert continued.startswith(f"00-{CLIENT_TRACE}-")
    assert not int(continued[-2:], 16) & 1
    assert continued != unsampled  # the bridge's own (unrecorded) span id
    assert {s.name for s in exporter.get_finished_spans()} == {
        "process s.sampled",
        "handler h",
        "send mem",
    }
    assert sampled == traceparent_of(one(exporter, "send mem"))


async def test_event_spans_end_when_delivery_raises(
    spans: InMemorySpanExporter, registry: HandlerRegistry
) -> None:
    bus = Bus(config(), registry=registry)  # never started: notification events raise
    with pytest.raises(Exception, match="not started"):
        await bus.emit(Event(type="t.early"))
    event = one(spans, "process t.early")
    assert event.status.status_code == StatusCode.ERROR


async def test_follow_ups_continue_from_the_event_that_emitted_them(
    spans: InMemorySpanExporter, registry: HandlerRegistry
) -> None:
    bus = Bus(config(), registry=registry)

    async def ship(event: Event, ctx: Context) -> None:
        await ctx.emit(Event(type="order.shipped"))
        await ctx.emit(Event(type="order.billed"))

    bus.subscribe("order.paid", ship, name="ship")
    async with bus:
        result = await bus.emit(Event(type="order.paid", headers={"traceparent": TRACEPARENT}))
    assert [f.type for f in result.follow_ups] == ["order.shipped", "order.billed"]
    paid = one(spans, "process order.paid")
    assert paid.parent is not None
    assert paid.parent.span_id == int(CLIENT_SPAN, 16)
    for name in ("process order.shipped", "process order.billed"):
        follow = one(spans, name)
        assert child_of(follow, paid)
        assert follow.links == ()


def test_only_bridge_spans_imports_opentelemetry_at_module_level() -> None:
    # What keeps tracing free when off: nothing else loads OpenTelemetry at import time,
    # and bridge.spans (which does) is imported by bridge.tracing's setup alone.
    root = Path(__file__).resolve().parents[2] / "bridge"
    offenders: list[str] = []
    importers: list[str] = []
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root.parent).with_suffix("").as_posix().replace("/", ".")
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            otel = any(m.startswith("opentelemetry") for m in modules)
            if otel and id(node) in top_level and name != "bridge.spans":
                offenders.append(f"{name}:{node.lineno}")
            if "bridge.spans" in modules:
                importers.append(name)
    assert offenders == []
    assert set(importers) == {"bridge.tracing"}


def test_setting_up_again_replaces_the_provider() -> None:
    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    try:
        assert tracing.setup(TracingConfig(enabled=True), {}, processor=SimpleSpanProcessor(first))
        assert tracing.setup(TracingConfig(enabled=True), {}, processor=SimpleSpanProcessor(second))
        assert tracing.TRACER is not None
        tracing.TRACER.start_span("after").end()
    finally:
        tracing.shutdown()
    assert tracing.TRACER is None
    assert [s.name for s in second.get_finished_spans()] == ["after"]
    assert first.get_finished_spans() == ()


async def test_scrapes_stay_prometheus_text_while_tracing_is_off() -> None:
    assert tracing.TRACER is None
    app = standalone_app(config())
    async with TestClient(TestServer(app)) as client:
        scrape = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        text = await scrape.text()
    assert scrape.headers["Content-Type"].startswith("text/plain")
    assert "# EOF" not in text
