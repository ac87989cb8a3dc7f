"""Traces leave over OTLP/HTTP: a local receiver decodes the protobuf request and finds them."""

from __future__ import annotations

import asyncio

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bridge import Bus, Context, Event, parse_config, tracing
from bridge.config import TracingConfig
from bridge.handlers import HandlerRegistry


async def test_spans_are_exported_over_otlp_http(registry: HandlerRegistry) -> None:
    received: list[ExportTraceServiceRequest] = []
    content_types: list[str] = []

    async def traces(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        content_types.append(request.content_type)
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        config = TracingConfig(
            enabled=True, endpoint=f"http://127.0.0.1:{port}/", service_name="checkout-bridge"
        )
        assert tracing.setup(config, {})
        bus = Bus(
            parse_config(
                {
                    "sinks": [{"name": "mem", "type": "memory"}],
                    "routes": [{"name": "all", "match": "*", "sink": "mem"}],
                    "handlers": {"entry_points": False},
                },
                {},
            ),
            registry=registry,
        )

        async def handler(event: Event, ctx: Context) -> None:
            pass

        bus.subscribe("otlp.*", handler, name="otlp-handler")
        async with bus:
            await bus.emit(Event(type="otlp.sent", id="x-1"))
        # The exporter's thread posts to this loop's receiver: flush off the loop.
        await asyncio.to_thread(tracing.shutdown)
    finally:
        tracing.shutdown()
        await runner.cleanup()
    assert content_types
    assert set(content_types) == {"application/x-protobuf"}
    names: set[str] = set()
    services: set[str] = set()
    for message in received:
        for resource_spans in message.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    services.add(attribute.value.string_value)
            for scope_spans in resource_spans.scope_spans:
                names.update(span.name for span in scope_spans.spans)
    assert services == {"checkout-bridge"}
    assert {"process otlp.sent", "handler otlp-handler", "send mem"} <= names
