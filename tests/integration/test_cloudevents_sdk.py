"""CloudEvents interoperability with the official Python SDK (``cloudevents``), through
the real server and real brokers: the SDK produces binary and structured HTTP requests,
and reads what the sinks wrote (Kafka with its Kafka binding; RabbitMQ through the AMQP
binding, mapping the AMQP 0-9-1 message to the binding's message by hand). Extension
attributes, ``dataschema``, an unset ``datacontenttype`` and ``time`` must survive.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import amqp as ce_amqp
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from tests.brokers import (
    ConsumedRecord,
    KafkaBroker,
    RabbitMQ,
    consume_all,
    create_topic,
    unique_name,
)
from tests.contract.target_rabbitmq import get_messages
from tests.integration.conftest import ServerFactory
from tests.integration.server_process import ServerProcess

FORMAT = JSONFormat()
SCHEMA = "https://example.com/schemas/order-placed.json"
EXTENSIONS: dict[str, Any] = {"myext": "hello", "tenant": "acme", "count": 42, "flag": True}
BINARY_MODES = ("binary", "structured")  # how the SDK posts the event to the bridge
SINK_MODES = ("binary", "structured")  # how the sink writes it to the broker


def sdk_event(mode: str) -> CloudEvent:
    return CloudEvent(
        attributes={
            "type": f"order.placed.{mode}",
            "source": "/shop",
            "id": unique_name(f"sdk-{mode}"),
            "time": datetime(2026, 11, 22, 7, 25, 0, tzinfo=UTC),
            "subject": "order/1",
            "datacontenttype": "application/json",
            "dataschema": SCHEMA,
            **EXTENSIONS,
        },
        data={"order": 1, "text": "é✓"},
    )


async def post_sdk(srv: ServerProcess, event: CloudEvent, mode: str) -> dict[str, Any]:
    """POST ``event`` as the SDK's HTTP binding encodes it in ``mode``."""
    message = (ce_http.to_binary if mode == "binary" else ce_http.to_structured)(event, FORMAT)
    async with (
        srv.session() as http,
        http.post("/v1/events", data=message.body, headers=message.headers) as r,
    ):
        body: dict[str, Any] = await r.json(content_type=None)
        assert r.status == 200, body
        assert body["status"] == "published", body
        return body


def kafka_to_sdk(record: ConsumedRecord, sink_mode: str) -> BaseCloudEvent:
    message = ce_kafka.KafkaMessage(
        headers=dict(record.headers), key=record.key, value=record.value or b""
    )
    if sink_mode == "binary":
        return ce_kafka.from_binary(message, FORMAT)
    return ce_kafka.from_structured(message, FORMAT)


def _amqp_value(value: object) -> object:
    return value.decode() if isinstance(value, bytes) else value


def amqp_to_sdk(message: aio_pika.abc.AbstractIncomingMessage, sink_mode: str) -> BaseCloudEvent:
    """The AMQP 0-9-1 message as the AMQP binding's message: the header table is the
    application properties, ``content_type`` the content-type property."""
    properties = {} if message.content_type is None else {"content-type": message.content_type}
    mapped = ce_amqp.AMQPMessage(
        properties=properties,
        application_properties={k: _amqp_value(v) for k, v in (message.headers or {}).items()},
        application_data=message.body,
    )
    if sink_mode == "binary":
        return ce_amqp.from_binary(mapped, FORMAT)
    return ce_amqp.from_structured(mapped, FORMAT)


def assert_same_event(
    got: BaseCloudEvent, sent: CloudEvent, *, typed: bool, sent_as_text: bool
) -> None:
    """``got`` carries every attribute of ``sent``. Headers carry text, so an extension
    keeps its type only where both hops are typed (JSON, AMQP); else it is text: the
    text the SDK sent (``sent_as_text``: binary HTTP, where the SDK writes ``True``) or
    the canonical form the bridge writes for a typed value (``true``)."""
    assert got.get_id() == sent.get_id()
    assert got.get_type() == sent.get_type()
    assert got.get_source() == sent.get_source()
    assert got.get_subject() == "order/1"
    assert got.get_time() == sent.get_time()
    assert got.get_dataschema() == SCHEMA
    assert got.get_data() == {"order": 1, "text": "é✓"}
    for name, value in EXTENSIONS.items():
        expected = value if typed else str(value) if sent_as_text else _canonical(value)
        assert got.get_extension(name) == expected, name
    # Nothing the producer did not set: the bridge's routing choice is not an attribute.
    assert got.get_extension("kind") is None


def _canonical(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _kafka_config(bootstrap: str, topic: str, sink_mode: str) -> dict[str, Any]:
    return {
        "sinks": [
            {
                "name": "kafka",
                "type": "kafka",
                "bootstrap_servers": bootstrap,
                "mode": sink_mode,
                "request_timeout_ms": 5000,
            }
        ],
        "routes": [{"name": "all", "match": "*", "sink": "kafka", "topic": topic}],
    }


class Bound:
    def __init__(self, name: str, queue: aio_pika.abc.AbstractQueue) -> None:
        self.name = name
        self.queue = queue


@pytest.fixture
async def dest(rabbitmq: RabbitMQ) -> AsyncIterator[Bound]:
    async with await aio_pika.connect(rabbitmq.url) as connection:
        channel = await connection.channel()
        name = unique_name("ce-sdk")
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(name, durable=True)
        await queue.bind(exchange, routing_key="#")
        yield Bound(name, queue)
        await channel.queue_delete(name)
        await channel.exchange_delete(name)


def _rabbit_config(url: str, exchange: str, sink_mode: str) -> dict[str, Any]:
    return {
        "sinks": [
            {"name": "rmq", "type": "rabbitmq", "url": url, "exchange": exchange, "mode": sink_mode}
        ],
        "routes": [{"name": "all", "match": "*", "sink": "rmq"}],
    }


@pytest.mark.parametrize("sink_mode", SINK_MODES)
async def test_sdk_events_round_trip_through_kafka(
    sink_mode: str, kafka_broker: KafkaBroker, evbridge_server_factory: ServerFactory
) -> None:
    topic = await create_topic(kafka_broker.bootstrap, unique_name("ce-sdk"))
    srv = evbridge_server_factory(_kafka_config(kafka_broker.bootstrap, topic, sink_mode))
    sent = {mode: sdk_event(mode) for mode in BINARY_MODES}
    for mode, event in sent.items():
        await post_sdk(srv, event, mode)
    records = await consume_all(kafka_broker.bootstrap, topic, n=len(sent))
    got = {e.get_id(): e for e in (kafka_to_sdk(r, sink_mode) for r in records)}
    for mode, event in sent.items():
        # Typed end to end only from structured JSON in to structured JSON out.
        typed = mode == "structured" and sink_mode == "structured"
        assert_same_event(got[event.get_id()], event, typed=typed, sent_as_text=mode == "binary")


@pytest.mark.parametrize("sink_mode", SINK_MODES)
async def test_sdk_events_round_trip_through_rabbitmq(
    sink_mode: str, rabbitmq: RabbitMQ, dest: Bound, evbridge_server_factory: ServerFactory
) -> None:
    srv = evbridge_server_factory(_rabbit_config(rabbitmq.url, dest.name, sink_mode))
    sent = {mode: sdk_event(mode) for mode in BINARY_MODES}
    for mode, event in sent.items():
        await post_sdk(srv, event, mode)
    messages = await get_messages(dest.queue, len(sent))
    got = {e.get_id(): e for e in (amqp_to_sdk(m, sink_mode) for m in messages)}
    for mode, event in sent.items():
        # AMQP carries booleans and integers natively, so binary mode keeps their type too.
        typed = mode == "structured"
        assert_same_event(got[event.get_id()], event, typed=typed, sent_as_text=mode == "binary")
    if sink_mode == "binary":
        headers = messages[0].headers or {}
        assert headers["cloudEvents:myext"] in ("hello", b"hello")
        assert "myext" not in headers
        assert "cloudEvents:kind" not in headers


BINARY_HEADERS = {"ce-specversion": "1.0", "ce-source": "/raw", "ce-type": "raw.bytes"}


@pytest.mark.parametrize(
    ("time_text", "sink_mode"),
    [("2026-11-22t07:25:00.5z", "binary"), ("2016-12-31T23:59:60Z", "structured")],
)
async def test_unset_content_type_and_exact_time_reach_kafka(
    time_text: str,
    sink_mode: str,
    kafka_broker: KafkaBroker,
    evbridge_server_factory: ServerFactory,
) -> None:
    topic = await create_topic(kafka_broker.bootstrap, unique_name("ce-raw"))
    srv = evbridge_server_factory(_kafka_config(kafka_broker.bootstrap, topic, sink_mode))
    # Binary mode without a Content-Type: opaque bytes, nobody set datacontenttype.
    headers = {**BINARY_HEADERS, "ce-id": unique_name("raw"), "ce-time": time_text}
    answer = await _post_without_content_type(srv, headers, b"\x00\x01\xff")
    [record] = await consume_all(kafka_broker.bootstrap, topic, n=1)
    if sink_mode == "binary":
        found = dict(record.headers)
        assert "content-type" not in found
        assert found["ce_time"] == time_text.encode()
        assert record.value == b"\x00\x01\xff"
    else:
        envelope = json.loads(record.value or b"")
        assert "datacontenttype" not in envelope
        assert envelope["time"] == time_text
        assert envelope["data_base64"] == "AAH/"
    assert answer["id"] == headers["ce-id"]


async def _post_without_content_type(
    srv: ServerProcess, headers: dict[str, str], body: bytes
) -> dict[str, Any]:
    """POST ``body`` with no Content-Type header at all (aiohttp would add one for bytes)."""
    async with (
        srv.session() as http,
        http.post(
            "/v1/events",
            data=body,
            headers=headers,
            skip_auto_headers=("Content-Type",),
        ) as r,
    ):
        answer: dict[str, Any] = await r.json(content_type=None)
        assert r.status == 200, answer
        return answer


async def test_unset_content_type_reaches_rabbitmq_unset(
    rabbitmq: RabbitMQ, dest: Bound, evbridge_server_factory: ServerFactory
) -> None:
    srv = evbridge_server_factory(_rabbit_config(rabbitmq.url, dest.name, "binary"))
    headers = {**BINARY_HEADERS, "ce-id": unique_name("raw"), "ce-time": "2026-11-22t07:25:00z"}
    await _post_without_content_type(srv, headers, b"\x00\x01")
    [message] = await get_messages(dest.queue, 1)
    assert message.content_type is None
    assert message.body == b"\x00\x01"
    assert _amqp_value((message.headers or {})["cloudEvents:time"]) == "2026-11-22t07:25:00z"


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"ce-time": "20261122T072500Z"}, "time"),
        ({"ce-time": "2026-W47-7T07:25:00Z"}, "time"),
        ({"ce-time": "2026-11-22T07Z"}, "time"),
        ({"ce-My-Ext": "v"}, "ce-My-Ext"),
    ],
)
async def test_the_server_refuses_bad_attributes_naming_them(
    headers: dict[str, str], field: str, evbridge_server_factory: ServerFactory
) -> None:
    srv = evbridge_server_factory({})
    all_headers = {**BINARY_HEADERS, "ce-id": "x-1", "Content-Type": "application/json", **headers}
    async with srv.session() as http, http.post("/v1/events", data=b"{}", headers=all_headers) as r:
        body = await r.json(content_type=None)
        assert r.status == 400, (body, srv.log_tail())
        assert body["error"]["field"] == field
    structured = {"specversion": "1.0", "id": "x-2", "source": "/s", "type": "t", "My-Ext": "v"}
    async with (
        srv.session() as http,
        http.post(
            "/v1/events",
            data=json.dumps(structured),
            headers={"Content-Type": "application/cloudevents+json"},
        ) as r,
    ):
        body = await r.json(content_type=None)
        assert r.status == 400, body
        assert body["error"]["field"] == "My-Ext"
