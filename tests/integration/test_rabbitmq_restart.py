"""BROKER RESTART — these tests stop and start the shared RabbitMQ app.

They run ``rabbitmqctl stop_app`` / ``start_app`` on the machine's broker, so for a few
seconds every other user of it (tests running in parallel, other sessions) sees an outage.
The ``rabbitmq`` fixture starts the app again in its teardown whatever happens, and each
test restarts it itself before cleaning up. Marked ``slow``: deselect with ``-m "not slow"``.
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
from tests.brokers import RabbitMQ, unique_name, wait_until
from tests.contract.target_rabbitmq import get_messages
from tests.integration.conftest import ServerFactory
from tests.integration.server_process import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture
async def durable_destination(rabbitmq: RabbitMQ) -> AsyncIterator[str]:
    """A durable exchange and queue, both named by the yielded name; removed afterwards
    (after restarting the broker app if the test left it stopped)."""
    name = unique_name("rmq-restart")
    async with await aio_pika.connect(rabbitmq.url) as connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(name, durable=True)
        await queue.bind(exchange, routing_key="#")
    try:
        yield name
    finally:
        if rabbitmq.app_stopped:
            await rabbitmq.start_app()
        async with await aio_pika.connect(rabbitmq.url) as connection:
            channel = await connection.channel()
            await channel.queue_delete(name)
            await channel.exchange_delete(name)


def outgoing(n: int) -> Outgoing:
    return Outgoing(
        Event(type="restart.test", data={"n": n}, source="/t"), "r", RabbitRoute(), None
    )


async def test_sink_fails_retriably_while_the_broker_is_down_and_resumes(
    rabbitmq: RabbitMQ, durable_destination: str
) -> None:
    name = durable_destination
    sink = RabbitSink(
        RabbitConfig(
            name="rmq", type="rabbitmq", url=rabbitmq.url, exchange=name, reconnect_max_s=0.5
        )
    )
    await sink.start()
    try:
        before = outgoing(0)
        assert isinstance((await sink.publish_many([before]))[0], Delivery)

        await rabbitmq.stop_app()
        await wait_until(lambda: not sink.connected, timeout=10, what="the sink to notice")
        loop = asyncio.get_running_loop()
        began = loop.time()
        down = await sink.publish_many([outgoing(1), outgoing(2)])
        assert loop.time() - began < 0.5, "publishing while the broker is down must fail fast"
        assert all(isinstance(r, SinkUnavailable) and r.retriable for r in down), down
        assert not (await sink.healthcheck()).ok

        await rabbitmq.start_app()
        after = outgoing(3)

        async def delivered() -> bool:
            [result] = await sink.publish_many([after])
            return isinstance(result, Delivery)

        await wait_until(delivered, timeout=20, what="publishing to resume", interval=0.2)
        assert (await sink.healthcheck()).ok
    finally:
        await sink.stop()

    async with await aio_pika.connect(rabbitmq.url) as connection:
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
    rabbitmq: RabbitMQ, durable_destination: str, evbridge_server_factory: ServerFactory
) -> None:
    name = durable_destination
    sink = {"name": "rmq", "type": "rabbitmq", "url": rabbitmq.url, "exchange": name}
    srv = evbridge_server_factory(
        {
            "sinks": [{**sink, "reconnect_max_s": 0.5}],
            "routes": [{"name": "all", "match": "*", "sink": "rmq"}],
        }
    )
    status, _, before = await post(srv, "/v1/events", {"type": "restart.before", "data": 0})
    assert status == 200, before

    await rabbitmq.stop_app()

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

    await rabbitmq.start_app()

    answers: list[Any] = []

    async def accepted() -> bool:
        status, _, body = await post(srv, "/v1/events", {"type": "restart.after", "data": 1})
        answers.append(body)
        return status == 200

    await wait_until(accepted, timeout=20, what="publishing to resume", interval=0.2)
    after = answers[-1]
    await wait_until(lambda: _status_is(srv, 200), timeout=10, what="/readyz to turn 200")
    assert srv.returncode is None, "the bridge kept running through the restart"

    async with await aio_pika.connect(rabbitmq.url) as connection:
        queue = await (await connection.channel()).get_queue(name)
        got = await get_messages(queue, 2)
    assert [m.message_id for m in got] == [before["id"], after["id"]]


async def _status_is(srv: ServerProcess, status: int) -> bool:
    return await readyz(srv) == status
