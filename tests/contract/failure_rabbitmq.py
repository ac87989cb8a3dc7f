"""Failure-contract target for the RabbitMQ sink: a private node with a small message limit.

The node is the tests' own (`RabbitMQNode`: its own name, ports and data), never the
machine's. "Down" is ``rabbitmqctl -n <private node> stop_app``: the AMQP listener and
every connection go away as when the broker dies, while the Erlang VM stays up, so coming
back takes a second rather than a node boot. Its ``max_message_size`` is 64 KiB, so a
message the broker refuses as too large is small enough to send in a test.
"""

from __future__ import annotations

from collections.abc import Iterator

import aio_pika
import pytest

from bridge.sinks.base import RouteOptions, Sink
from bridge.sinks.rabbitmq import RabbitConfig, RabbitRoute, RabbitSink
from tests.brokers import RabbitMQNode, unique_name

PASSWORD_ENV = "EVB_FAILURE_RABBITMQ_PASSWORD"
WRONG_ENV = "EVB_FAILURE_RABBITMQ_WRONG"
MAX_MESSAGE_BYTES = 64 * 1024


class SmallMessageNode(RabbitMQNode):
    """A private node whose ``max_message_size`` is `MAX_MESSAGE_BYTES`."""

    def _make_folder(self) -> None:
        super()._make_folder()
        with (self.folder / "own.conf").open("a") as conf:
            conf.write(f"max_message_size = {MAX_MESSAGE_BYTES}\n")


class RabbitFailureTarget:
    too_large_bytes = MAX_MESSAGE_BYTES
    not_applicable: dict[str, str] = {}  # noqa: RUF012 - never mutated

    def __init__(self, node: SmallMessageNode) -> None:
        self.node = node
        self.exchange = unique_name("failure")

    async def start_broker(self) -> None:
        if self.node.app_stopped:
            await self.node.start_app()
        # The destination: a durable exchange with a bound durable queue (kept across
        # stop_app / start_app), so a mandatory publish to it is routable.
        async with await aio_pika.connect(self.node.url) as connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(
                self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(self.exchange, durable=True)
            await queue.bind(exchange, routing_key="#")

    def stop_broker(self) -> None:
        if not self.node.app_stopped:
            self.node.app_stopped = True  # first: the teardown undoes even a half-done stop
            self.node._ctl("stop_app")

    def _config(self, password_env: str) -> RabbitConfig:
        return RabbitConfig(
            name="rabbit",
            type="rabbitmq",
            url=self.node.url,
            password_env=password_env,
            exchange=self.exchange,
            channels=2,
            connect_timeout_s=2.0,
            confirm_timeout_s=5.0,
            reconnect_max_s=0.2,
            probe_interval_s=0.5,
        )

    def sink(self) -> Sink:
        return RabbitSink(self._config(PASSWORD_ENV))

    def refused_sink(self) -> Sink:
        return RabbitSink(self._config(WRONG_ENV))

    def route(self) -> RouteOptions:
        return RabbitRoute(exchange=self.exchange)

    def missing_route(self) -> RouteOptions:
        return RabbitRoute(exchange=f"missing-{self.exchange}")


@pytest.fixture(scope="session")
def small_message_rabbitmq_node() -> Iterator[SmallMessageNode]:
    """One private node for the session; stopped and its folder removed at the end."""
    node = SmallMessageNode()
    try:
        node.boot()
        yield node
    finally:
        node.close()


@pytest.fixture
def failure_rabbitmq(
    small_message_rabbitmq_node: SmallMessageNode, monkeypatch: pytest.MonkeyPatch
) -> RabbitFailureTarget:
    node = small_message_rabbitmq_node
    if not node.running:
        node.boot()
    target = RabbitFailureTarget(node)
    monkeypatch.setenv(PASSWORD_ENV, "guest")
    monkeypatch.setenv(WRONG_ENV, "not-guest")
    target.stop_broker()  # the contract's broker starts stopped
    return target
