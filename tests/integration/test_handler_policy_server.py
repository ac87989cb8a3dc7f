"""Handlers through the real server (``evbridge serve``) and a real RabbitMQ: a handler
with ``on_error="reject"`` answers 422 and nothing reaches the broker; handler classes and
``Depends`` load from ``handlers.modules``.

Each test declares its own exchange and bound queue on the machine's broker.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aio_pika
import pytest

from tests.brokers import RabbitMQ, unique_name
from tests.contract.target_rabbitmq import get_messages
from tests.integration.conftest import ServerFactory

POLICY_HANDLERS = """
from bridge import Depends, Event, on


def prefix():
    return "audited"


def opened(event: Event, label: str = Depends(prefix)):
    yield f"{label}:{event.type}"


@on("audit.*")
class Audit:
    def __init__(self, label: str = Depends(prefix)):
        self.label = label

    async def handle(self, event: Event, entry: str = Depends(opened)):
        if entry != f"{self.label}:{event.type}":
            raise AssertionError(entry)


class Refused(Exception):
    pass


@on("order.placed", on_error="reject")
async def check_stock(event, ctx):
    if event.data.get("qty", 0) > 10:
        raise Refused("out of stock")


@on("order.placed")
async def after(event, ctx):
    pass
"""


@pytest.fixture
async def queue(rabbitmq: RabbitMQ) -> AsyncIterator[tuple[str, aio_pika.abc.AbstractQueue]]:
    name = unique_name("handler-policy")
    async with await aio_pika.connect(rabbitmq.url) as connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC)
        bound = await channel.declare_queue(name, auto_delete=True)
        await bound.bind(exchange, routing_key="#")
        yield name, bound
        await channel.queue_delete(name)
        await channel.exchange_delete(name)


async def test_a_rejecting_handler_answers_422_and_nothing_is_published(
    rabbitmq: RabbitMQ,
    queue: tuple[str, aio_pika.abc.AbstractQueue],
    evbridge_server_factory: ServerFactory,
) -> None:
    exchange, bound = queue
    config = {
        "sinks": [{"name": "rmq", "type": "rabbitmq", "url": rabbitmq.url, "exchange": exchange}],
        "routes": [{"match": "*", "sink": "rmq"}],
    }
    srv = evbridge_server_factory(config, handlers={"policy_handlers": POLICY_HANDLERS})

    status, body = await srv.emit({"type": "order.placed", "data": {"qty": 11, "n": "refused"}})
    assert status == 422, body
    assert body["status"] == "rejected"
    assert body["error"]["code"] == "handler_failed"
    assert "policy_handlers.check_stock" in body["error"]["message"]
    assert "Refused: out of stock" in body["error"]["message"]
    assert body["error"]["retriable"] is False
    # The rest of the chain was skipped.
    assert [(h["name"], h["outcome"]) for h in body["handlers"]] == [
        ("policy_handlers.check_stock", "error")
    ]

    # In a batch the rejected item is refused on its own; the others are published.
    status, batch = await srv.emit_batch(
        [
            {"type": "order.placed", "data": {"qty": 12, "n": "refused-in-batch"}},
            {"type": "order.placed", "data": {"qty": 1, "n": "accepted"}},
        ]
    )
    assert status == 200, batch
    assert (batch["accepted"], batch["rejected"]) == (1, 1)
    assert batch["results"][0]["error"]["code"] == "handler_failed"

    # /v1/info shows each handler's policy.
    async with srv.session("unix") as http, http.get("/v1/info") as reply:
        info = await reply.json()
    policies = {h["name"]: h["on_error"] for h in info["handlers"]}
    assert policies["policy_handlers.check_stock"] == "reject"
    assert policies["policy_handlers.after"] == "continue"

    # Handler classes with dependencies load from handlers.modules like functions.
    status, body = await srv.emit({"type": "audit.x", "kind": "domain"})
    assert status == 200, body
    assert [(h["name"], h["outcome"]) for h in body["handlers"]] == [
        ("policy_handlers.Audit", "ok")
    ]

    # The queue's first message is the accepted event, sent after both refused ones: they
    # never reached the broker.
    [message] = await get_messages(bound, 1)
    assert json.loads(message.body) == {"qty": 1, "n": "accepted"}
    assert (await bound.declare()).message_count == 0
