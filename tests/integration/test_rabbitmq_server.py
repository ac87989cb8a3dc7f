"""The RabbitMQ sink through the real HTTP server (``evbridge serve`` as a subprocess).

Each test declares its own exchange and bound durable queue; the broker-restart scenario
is in test_rabbitmq_restart.py (it stops the shared broker).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from yarl import URL

from bridge.event import Event
from tests.brokers import LOCALHOST, RabbitMQ, TcpProxy, unique_name, wait_until
from tests.contract.target_rabbitmq import get_messages
from tests.integration.conftest import ServerFactory
from tests.integration.server_process import ServerProcess

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Bound:
    """A durable topic exchange and a durable queue bound to it with ``binding``."""

    def __init__(self, name: str, queue: aio_pika.abc.AbstractQueue) -> None:
        self.name = name
        self.queue = queue


@pytest.fixture
async def amqp(rabbitmq: RabbitMQ) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    async with await aio_pika.connect(rabbitmq.url) as connection:
        yield await connection.channel()


async def bind(channel: aio_pika.abc.AbstractChannel, binding: str = "#") -> Bound:
    name = unique_name("rmq-server")
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(name, durable=True)
    await queue.bind(exchange, routing_key=binding)
    return Bound(name, queue)


async def unbind(channel: aio_pika.abc.AbstractChannel, bound: Bound) -> None:
    await channel.queue_delete(bound.name)
    await channel.exchange_delete(bound.name)


@pytest.fixture
async def dest(amqp: aio_pika.abc.AbstractChannel) -> AsyncIterator[Bound]:
    bound = await bind(amqp)
    yield bound
    await unbind(amqp, bound)


def rabbit_config(
    url: str, exchange: str, routes: list[dict[str, Any]], **sink: Any
) -> dict[str, Any]:
    """One RabbitMQ sink named ``rmq``; routes default to it."""
    return {
        "sinks": [{"name": "rmq", "type": "rabbitmq", "url": url, "exchange": exchange, **sink}],
        "routes": [{"sink": "rmq", **route} for route in routes],
    }


async def ready_status(srv: ServerProcess) -> int:
    async with srv.session("metrics") as http, http.get("/readyz") as r:
        return r.status


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def test_single_and_batch_events_arrive_with_properties_and_headers(
    rabbitmq: RabbitMQ, dest: Bound, evbridge_server_factory: ServerFactory
) -> None:
    routes = [
        {"name": "orders", "match": "order.*", "routing_key": "shop.{type}", "key": "{subject}"},
        {"name": "rest", "match": "*"},
    ]
    srv = evbridge_server_factory(rabbit_config(rabbitmq.url, dest.name, routes))
    single = {
        "type": "order.placed",
        "source": "/shop",
        "subject": "order/1",
        "data": {"order": 1, "text": "é✓"},
        "headers": {"x-tenant": "t1"},
        "correlation_id": "corr-1",
        "ttl_ms": 60000,
        "time": "2026-11-05T10:20:30.5+01:00",
    }
    status, body = await srv.emit(single, headers={"traceparent": TRACEPARENT})
    assert status == 200, body
    assert body["status"] == "published"
    assert body["deliveries"] == [
        {"sink": "rmq", "destination": dest.name, "routing_key": "shop.order.placed"}
    ]

    batch = [{"type": "note.added", "source": "/notes", "data": {"note": i}} for i in range(5)]
    status, batch_body = await srv.emit_batch(batch)
    assert status == 200, batch_body
    assert batch_body["accepted"] == 5
    ndjson = "\n".join(json.dumps({"type": "note.nd", "data": {"n": i}}) for i in range(3))
    async with (
        srv.session() as http,
        http.post(
            "/v1/events/batch", data=ndjson, headers={"Content-Type": "application/x-ndjson"}
        ) as r,
    ):
        assert r.status == 200
        nd_body = await r.json()
    assert all(res["status"] == "published" for res in nd_body["results"])

    got = await get_messages(dest.queue, 9)
    first = got[0]
    assert first.message_id == body["id"]
    assert first.routing_key == "shop.order.placed"
    assert json.loads(first.body) == {"order": 1, "text": "é✓"}
    assert first.type == "order.placed"
    assert first.app_id == "/shop"
    assert first.content_type == "application/json"
    assert first.correlation_id == "corr-1"
    assert first.expiration == 60.0  # seconds, as aio-pika reports it
    assert first.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert first.timestamp == datetime(2026, 11, 5, 9, 20, 30, tzinfo=UTC)  # whole seconds
    headers = {k: text(v) for k, v in first.headers.items()}
    assert headers == {
        "cloudEvents:specversion": "1.0",
        "cloudEvents:id": body["id"],
        "cloudEvents:source": "/shop",
        "cloudEvents:type": "order.placed",
        "cloudEvents:time": "2026-11-05T10:20:30.5+01:00",
        "cloudEvents:subject": "order/1",
        "cloudEvents:partitionkey": "order/1",
        "cloudEvents:correlationid": "corr-1",
        "cloudEvents:ttl": "60000",
        "x-tenant": "t1",
        "traceparent": TRACEPARENT,
    }

    # The batches arrive in request order, each event with its own id and routing key.
    results = batch_body["results"] + nd_body["results"]
    assert [m.message_id for m in got[1:]] == [r["id"] for r in results]
    assert [m.routing_key for m in got[1:]] == ["note.added"] * 5 + ["note.nd"] * 3
    assert [r["deliveries"][0]["routing_key"] for r in results] == [m.routing_key for m in got[1:]]
    assert [json.loads(m.body) for m in got[1:6]] == [{"note": i} for i in range(5)]
    for message in got[1:]:
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        Event(type="t", time=text(message.headers["cloudEvents:time"]))  # the server set a time
    assert got[1].app_id == "/notes"


async def test_persistent_off_and_route_exchange_override(
    rabbitmq: RabbitMQ,
    amqp: aio_pika.abc.AbstractChannel,
    dest: Bound,
    evbridge_server_factory: ServerFactory,
) -> None:
    other = await bind(amqp)
    try:
        config = rabbit_config(
            rabbitmq.url, dest.name, [{"name": "all", "match": "*"}], persistent=False
        )
        config["sinks"].append(
            {"name": "elsewhere", "type": "rabbitmq", "url": rabbitmq.url, "exchange": dest.name}
        )
        config["routes"].insert(
            0, {"name": "moved", "match": "moved.*", "sink": "elsewhere", "exchange": other.name}
        )
        srv = evbridge_server_factory(config)
        status, body = await srv.emit({"type": "plain.event", "data": 1})
        assert status == 200, body
        status, moved = await srv.emit({"type": "moved.event", "data": 2})
        assert status == 200, moved
        assert moved["deliveries"][0]["destination"] == other.name
        [transient] = await get_messages(dest.queue, 1)
        assert transient.delivery_mode == aio_pika.DeliveryMode.NOT_PERSISTENT
        [persistent] = await get_messages(other.queue, 1)
        assert persistent.message_id == moved["id"]
        assert persistent.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    finally:
        await unbind(amqp, other)


async def test_unroutable_events_fail_alone_and_say_so(
    rabbitmq: RabbitMQ, amqp: aio_pika.abc.AbstractChannel, evbridge_server_factory: ServerFactory
) -> None:
    bound = await bind(amqp, binding="bound.#")
    try:
        srv = evbridge_server_factory(rabbit_config(rabbitmq.url, bound.name, [{"match": "*"}]))
        batch = [{"type": t, "data": i} for i, t in enumerate(["bound.a", "lost.b", "bound.c"])]
        status, body = await srv.emit_batch(batch)
        assert status == 200, body
        results = body["results"]
        assert [r["status"] for r in results] == ["published", "rejected", "published"]
        error = results[1]["error"]
        assert error["code"] == "unroutable"
        assert error["retriable"] is False
        assert bound.name in error["message"]
        got = await get_messages(bound.queue, 2)
        assert [m.message_id for m in got] == [results[0]["id"], results[2]["id"]]

        status, single = await srv.emit({"type": "lost.single", "data": 1})
        assert status == 502, single
        assert single["error"]["code"] == "unroutable"
        assert single["status"] == "rejected"
    finally:
        await unbind(amqp, bound)


async def test_broker_unreachable_at_start_then_serves_without_a_restart(
    rabbitmq: RabbitMQ, dest: Bound, evbridge_server_factory: ServerFactory
) -> None:
    async with TcpProxy(LOCALHOST, URL(rabbitmq.url).port or 5672) as proxy:
        await proxy.refuse()
        url = f"amqp://guest:guest@{LOCALHOST}:{proxy.port}/"
        config = rabbit_config(url, dest.name, [{"match": "*"}], reconnect_max_s=0.3)
        srv = evbridge_server_factory(config, wait_ready=False)
        assert await ready_status(srv) == 503
        async with srv.session() as http, http.post("/v1/events", json={"type": "a"}) as r:
            assert r.status == 503
            assert r.headers["Retry-After"]
            body = await r.json()
        assert body["error"]["code"] == "sink_unavailable"
        assert body["error"]["retriable"] is True

        await proxy.accept()
        await wait_until(lambda: _ready(srv), timeout=15, what="/readyz to turn 200", interval=0.1)
        status, published = await srv.emit({"type": "after.connect", "data": 1})
        assert status == 200, published
        [message] = await get_messages(dest.queue, 1)
        assert message.message_id == published["id"]


async def _ready(srv: ServerProcess) -> bool:
    return await ready_status(srv) == 200
