"""`evbridge serve` with the standard OTEL_* variables exports its spans, and a handler's
own spans (through OpenTelemetry's global tracer provider) nest under its handler span."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.integration.conftest import ServerFactory

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"

HANDLERS = """
from opentelemetry import trace

from bridge import on

tracer = trace.get_tracer("shop.handlers")


@on("order.*")
async def reserve(event, ctx):
    with tracer.start_as_current_span("reserve stock"):
        pass


@on("order.*")
def invoice(event):
    with tracer.start_as_current_span("write invoice"):
        pass
"""


class Receiver(ThreadingHTTPServer):
    spans: list[Any]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        for resource_spans in message.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.server.spans.extend(scope_spans.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(("127.0.0.1", 0), _Handler)
    server.spans = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_served_bridge_exports_the_request_tree(
    evbridge_server_factory: ServerFactory, receiver: Receiver
) -> None:
    port = receiver.server_address[1]
    server = evbridge_server_factory(
        handlers={"shop_handlers": HANDLERS},
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_SERVICE_NAME": "shop-bridge",
        },
    )
    status, _, body = server.sync_client().request(
        "POST",
        "/v1/events",
        json.dumps({"type": "order.created", "data": {}}).encode(),
        {"content-type": "application/json", "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
    )
    assert status == 200, body
    assert server.stop() == 0  # the exporter flushes on shutdown
    by_name = {span.name: span for span in receiver.spans}
    assert {
        "POST /v1/events",
        "process order.created",
        "handler shop_handlers.reserve",
        "handler shop_handlers.invoice",
        "reserve stock",
        "write invoice",
        "send mem",
    } <= set(by_name)
    assert {span.trace_id.hex() for span in receiver.spans} == {CLIENT_TRACE}
    assert by_name["POST /v1/events"].parent_span_id.hex() == CLIENT_SPAN
    for own, handler in (
        ("reserve stock", "handler shop_handlers.reserve"),
        ("write invoice", "handler shop_handlers.invoice"),
    ):
        assert by_name[own].parent_span_id == by_name[handler].span_id
