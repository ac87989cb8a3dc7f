"""Broker restarts, on a RabbitMQ node of the tests' own.

Every broker death here is on ``private_rabbitmq`` (tests/brokers.py): a node started for this
test session with its own node name (``evbridge-test-<pid>-<hex>@localhost``), AMQP port,
distribution port and data folder, taken down with ``rabbitmqctl -n <that node> stop_app`` or
``stop`` and stopped at the end of the session. The machine's RabbitMQ (``rabbit@localhost`` on
5672) is never stopped, restarted or reconfigured; the tests check that it kept answering
while theirs was down, and a session-wide sentinel fails the run if it was restarted. Starting
the node costs ~4-10 s once per session (``rabbitmq-server`` must be installed; with
``CI=true`` a node that does not start fails the tests). Marked ``slow``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from bridge.errors import SinkUnavailable
from bridge.event import Event
from bridge.results import Delivery
from bridge.sinks.base import Outgoing
from bridge.sinks.rabbitmq import RabbitConfig, RabbitRoute, RabbitSink
from tests.brokers import RabbitMQ, RabbitMQNode, unique_name, wait_until
from tests.contract.target_rabbitmq import get_messages
from tests.integration.conftest import ServerFactory
from tests.integration.server_process import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture
async def durable_destination(private_rabbitmq: RabbitMQNode) -> AsyncIterator[str]:
    """A durable exchange and queue on the private node, both named by the yielded name;
    removed afterwards (after bringing the node back up if the test left it down)."""
    name = unique_name("rmq-restart")
    async with await aio_pika.connect(private_rabbitmq.url) as connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(name, durable=True)
        await queue.bind(exchange, routing_key="#")
    try:
        yield name
    finally:
        await asyncio.to_thread(private_rabbitmq.restore)
        async with await aio_pika.connect(private_rabbitmq.url) as connection:
            channel = await connection.channel()
            await channel.queue_delete(name)
            await channel.exchange_delete(name)


async def take_down(node: RabbitMQNode, how: str) -> None:
    """``app``: stop the RabbitMQ app (the Erlang VM stays up); ``node``: stop the whole node."""
    await (node.stop_app() if how == "app" else node.stop())


async def bring_up(node: RabbitMQNode, how: str) -> None:
    await (node.start_app() if how == "app" else node.start())


def outgoing(n: int) -> Outgoing:
    return Outgoing(
        Event(type="restart.test", data={"n": n}, source="/t"), "r", RabbitRoute(), None
    )


@pytest.mark.parametrize("how", ["app", "node"])
async def test_sink_fails_retriably_while_the_broker_is_down_and_resumes(
    private_rabbitmq: RabbitMQNode, rabbitmq: RabbitMQ, durable_destination: str, how: str
) -> None:
    name = durable_destination
    node = private_rabbitmq
    sink = RabbitSink(
        RabbitConfig(name="rmq", type="rabbitmq", url=node.url, exchange=name, reconnect_max_s=0.5)
    )
    await sink.start()
    try:
        before = outgoing(0)
        assert isinstance((await sink.publish_many([before]))[0], Delivery)

        await take_down(node, how)
        await wait_until(lambda: not sink.connected, timeout=10, what="the sink to notice")
        loop = asyncio.get_running_loop()
        began = loop.time()
        down = await sink.publish_many([outgoing(1), outgoing(2)])
        assert loop.time() - began < 0.5, "publishing while the broker is down must fail fast"
        assert all(isinstance(r, SinkUnavailable) and r.retriable for r in down), down
        assert not (await sink.healthcheck()).ok
        assert await rabbitmq.answers(), "only the private node went down"

        await bring_up(node, how)
        after = outgoing(3)

        async def delivered() -> bool:
            [result] = await sink.publish_many([after])
            return isinstance(result, Delivery)

        await wait_until(delivered, timeout=20, what="publishing to resume", interval=0.2)
        assert (await sink.healthcheck()).ok
    finally:
        await sink.stop()

    async with await aio_pika.connect(node.url) as connection:
        queue = await (await connection.channel()).get_queue(name)
        got = await get_messages(queue, 2)
    # The persistent message from before the restart survived it; nothing from the outage
    # arrived; the first successful publish afterwards did.
    assert [m.message_id for m in got] == [before.event.id, after.event.id]


async def post(srv: ServerProcess, path: str, payload: object) -> tuple[int, dict[str, str], Any]:
    async with srv.session() as http, http.post(path, json=payload) as r:
        return r.status, dict(r.headers), await r.json()


async def readyz(srv: ServerProcess) -> int:
    async with srv.session("metrics") as http, http.get("/readyz") as r:
        return r.status


async def test_server_reports_retriable_failures_during_a_restart_then_resumes(
    private_rabbitmq: RabbitMQNode,
    rabbitmq: RabbitMQ,
    durable_destination: str,
    evbridge_server_factory: ServerFactory,
) -> None:
    name = durable_destination
    node = private_rabbitmq
    sink = {"name": "rmq", "type": "rabbitmq", "url": node.url, "exchange": name}
    srv = evbridge_server_factory(
        {
            "sinks": [{**sink, "reconnect_max_s": 0.5}],
            "routes": [{"name": "all", "match": "*", "sink": "rmq"}],
        }
    )
    status, _, before = await post(srv, "/v1/events", {"type": "restart.before", "data": 0})
    assert status == 200, before

    await node.stop_app()

    async def refused() -> bool:
        status, _, _ = await post(srv, "/v1/events", {"type": "restart.during"})
        return status == 503

    await wait_until(refused, timeout=10, what="publishes to be refused", interval=0.1)
    status, headers, single = await post(srv, "/v1/events", {"type": "restart.during"})
    assert status == 503
    assert headers["Retry-After"]
    assert single["error"]["retriable"] is True
    status, _, batch = await post(srv, "/v1/events/batch", [{"type": "restart.during"}] * 3)
    assert status == 200
    assert [r["error"]["retriable"] for r in batch["results"]] == [True] * 3
    await wait_until(lambda: _status_is(srv, 503), timeout=10, what="/readyz to turn 503")
    assert await rabbitmq.answers(), "only the private node went down"

    await node.start_app()

    answers: list[Any] = []

    async def accepted() -> bool:
        status, _, body = await post(srv, "/v1/events", {"type": "restart.after", "data": 1})
        answers.append(body)
        return status == 200

    await wait_until(accepted, timeout=20, what="publishing to resume", interval=0.2)
    after = answers[-1]
    await wait_until(lambda: _status_is(srv, 200), timeout=10, what="/readyz to turn 200")
    assert srv.returncode is None, "the bridge kept running through the restart"

    async with await aio_pika.connect(node.url) as connection:
        queue = await (await connection.channel()).get_queue(name)
        got = await get_messages(queue, 2)
    assert [m.message_id for m in got] == [before["id"], after["id"]]


async def _status_is(srv: ServerProcess, status: int) -> bool:
    return await readyz(srv) == status
