"""A RabbitMQ source through the real sidecar (``evbridge serve`` as a subprocess):
consume -> handlers -> route to a sink (a relay between exchanges), and the source in
``/readyz``, ``/v1/info`` and ``/metrics``. Exchanges and queues are the test's own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aio_pika
import pytest

from tests.brokers import RabbitMQ, unique_name, wait_until
from tests.contract.target_rabbitmq import get_messages
from tests.integration.conftest import ServerFactory

TIMEOUT = 15.0


class Relay:
    def __init__(self) -> None:
        self.inbound = unique_name("src-in")
        self.queue = unique_name("src-in-q")
        self.outbound = unique_name("src-out")
        self.out_queue = unique_name("src-out-q")


@pytest.fixture
async def amqp(rabbitmq: RabbitMQ) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    async with await aio_pika.connect(rabbitmq.url) as connection:
        yield await connection.channel()


@pytest.fixture
async def relay(amqp: aio_pika.abc.AbstractChannel) -> AsyncIterator[Relay]:
    relay = Relay()
    await amqp.declare_exchange(relay.inbound, aio_pika.ExchangeType.TOPIC, durable=True)
    out = await amqp.declare_exchange(relay.outbound, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await amqp.declare_queue(relay.out_queue, durable=True)
    await queue.bind(out, routing_key="#")
    yield relay
    for name in (relay.queue, relay.out_queue):
        await amqp.queue_delete(name)
    for name in (relay.inbound, relay.outbound):
        await amqp.exchange_delete(name)


async def test_a_consumed_message_is_relayed_and_the_source_is_visible(
    rabbitmq: RabbitMQ,
    relay: Relay,
    amqp: aio_pika.abc.AbstractChannel,
    evbridge_server_factory: ServerFactory,
) -> None:
    config = {
        "sinks": [{"name": "out", "type": "rabbitmq", "url": rabbitmq.url,
                   "exchange": relay.outbound}],
        "routes": [{"match": "amqp.*", "sink": "out", "routing_key": "{type}"}],
        "sources": [{"name": "in", "type": "rabbitmq", "url": rabbitmq.url,
                     "queue": relay.queue, "event_type": "amqp.{routing_key}",
                     "bindings": [{"exchange": relay.inbound, "routing_keys": ["#"]}]}],
    }  # fmt: skip
    srv = evbridge_server_factory(config)
    async with srv.session("metrics") as http, http.get("/readyz") as r:
        assert r.status == 200
        body = await r.json()
    assert body["sources"] == {"in": {"ok": True, "detail": body["sources"]["in"]["detail"]}}
    async with srv.session() as http, http.get("/v1/info") as r:
        info = await r.json()
    assert info["sources"] == [
        {"name": "in", "type": "rabbitmq", "queue": relay.queue, "route": True,
         "on_error": "dead_letter"}
    ]  # fmt: skip

    inbound = await amqp.get_exchange(relay.inbound)
    await inbound.publish(aio_pika.Message(b'{"job": 42}', message_id="m-42"), routing_key="job")
    out_queue = await amqp.declare_queue(relay.out_queue, passive=True)
    (message,) = await get_messages(out_queue, 1)
    assert message.routing_key == "amqp.job"
    assert message.message_id == "m-42"
    assert message.body == b'{"job":42}'

    async def acked() -> bool:
        return await srv.metric("evbridge_consumed_total", {"source": "in", "outcome": "ok"}) == 1

    await wait_until(acked, timeout=TIMEOUT, what="the consumed message counted as ok")
    queue = await amqp.declare_queue(relay.queue, passive=True)
    assert queue.declaration_result.message_count == 0
    assert await srv.metric("evbridge_source_up", {"source": "in"}) == 1
    assert srv.stop() == 0
