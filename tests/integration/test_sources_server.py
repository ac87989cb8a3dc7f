"""Sources through the real sidecar (``evbridge serve`` as a subprocess): consume ->
handlers -> route to a sink (a relay between exchanges; NATS into a file), and the source
in ``/readyz``, ``/v1/info`` and ``/metrics``. Exchanges, queues and streams are the
test's own."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aio_pika
import pytest
from nats.aio.client import Client

from tests.brokers import RabbitMQ, unique_name, wait_until
from tests.contract.target_rabbitmq import get_messages
from tests.integration.conftest import ServerFactory
from tests.integration.source_support import TIMEOUT, amqp, queue_depth
from tests.nats_broker import add_stream, delete_stream, nats_client, nats_url

__all__ = ["amqp", "nats_client", "nats_url"]


class Relay:
    def __init__(self) -> None:
        self.inbound = unique_name("src-in")
        self.queue = unique_name("src-in-q")
        self.outbound = unique_name("src-out")
        self.out_queue = unique_name("src-out-q")


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
    assert await queue_depth(amqp, relay.queue) == 0
    assert await srv.metric("evbridge_source_up", {"source": "in"}) == 1
    assert srv.stop() == 0


async def test_a_nats_source_feeds_a_file_sink_through_the_server(
    nats_url: str, nats_client: Client, evbridge_server_factory: ServerFactory
) -> None:
    prefix = unique_name("srcsrv").replace("-", "_")
    stream = await add_stream(nats_url, [f"{prefix}.>"], name=prefix.upper())
    try:
        config = {
            "sinks": [{"name": "out", "type": "file", "path": "out.jsonl"}],
            "routes": [{"match": "*", "sink": "out"}],
            "sources": [{"name": "js", "type": "nats", "servers": nats_url, "stream": stream,
                         "durable": "evbridge", "event_type": "nats.{subject}"}],
        }  # fmt: skip
        srv = evbridge_server_factory(config)
        await nats_client.jetstream().publish(f"{prefix}.job", b'{"job": 7}')

        async def acked() -> bool:
            labels = {"source": "js", "outcome": "ok"}
            return await srv.metric("evbridge_consumed_total", labels) == 1

        await wait_until(acked, timeout=TIMEOUT, what="the consumed message counted as ok")
        (line,) = (srv.workdir / "out.jsonl").read_text().splitlines()
        written = json.loads(line)
        assert (written["type"], written["data"]) == (f"nats.{prefix}.job", {"job": 7})
        assert srv.stop() == 0
        info = await nats_client.jetstream().consumer_info(stream, "evbridge")
        assert (info.num_pending, info.num_ack_pending) == (0, 0)
    finally:
        await delete_stream(nats_url, stream)
