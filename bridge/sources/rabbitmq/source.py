"""The RabbitMQ source: consumes one queue with manual acks, on the toolkit's `Supervisor`.

Each connection (made by the supervisor, replaced when lost) sets the channel's
prefetch, declares the queue (durable) and its bindings unless ``declare:
false``, and starts a consumer. Every delivered message is decoded and handed to
the runner in the task aio-pika runs the consumer callback in (one per message
already: the source adds none of its own), so ``prefetch`` bounds how many are
in flight; it is acked, requeued or dead-lettered only once the runner's
`Verdict` is in. A message in flight when its connection is lost is redelivered
by the broker; its handlers are cancelled with the channel's tasks, since their
outcome could no longer be acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from time import perf_counter
from typing import Final

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)
from yarl import URL

from bridge.metrics import METRICS, Metrics
from bridge.redact import mask_url
from bridge.sinks.base import Health
from bridge.sinks.rabbitmq.connection import CLOSE_TIMEOUT_S, WatchedConnection, connection_url
from bridge.sinks.rabbitmq.errors import connect_error
from bridge.sinks.toolkit import Backoff, Supervisor, describe
from bridge.sources.base import Deliver, Incoming, Verdict
from bridge.sources.decode import Undecodable
from bridge.sources.rabbitmq.config import RabbitSourceConfig
from bridge.sources.rabbitmq.message import amqp_event

log = logging.getLogger("bridge.sources.rabbitmq")

REASON_HEADER: Final = "x-evbridge-reason"
SOURCE_HEADER: Final = "x-evbridge-source"


def source_url(config: RabbitSourceConfig) -> URL:
    """The URL to connect to: the password from ``password_env``, heartbeat and name added."""
    return connection_url(
        config,
        key=f"sources.{config.name}.password_env",
        client=f"evbridge source {config.name}",
    )


class _Link(WatchedConnection):
    """One connection: the consuming channel, an admin channel for probes, the queue."""

    def __init__(
        self, connection: AbstractConnection, channel: AbstractChannel, admin: AbstractChannel
    ) -> None:
        super().__init__(connection)
        self.channel = channel
        self.admin = admin
        self.queue: AbstractQueue | None = None
        self.consumer_tag: str | None = None

    async def probe(self) -> None:
        assert self.queue is not None
        await self.admin.declare_queue(self.queue.name, passive=True)

    async def cancel(self) -> None:
        """Stop the broker handing out more messages (those in flight stay unacked)."""
        if self.queue is not None and self.consumer_tag is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self.queue.cancel(self.consumer_tag)
            self.consumer_tag = None


class RabbitSource:
    """Consumes a RabbitMQ queue into the bus; see the module docstring."""

    def __init__(self, config: RabbitSourceConfig, metrics: Metrics = METRICS) -> None:
        self.name = config.name
        self.config = config
        self.url = source_url(config)  # the password is read now: a missing one fails the load
        self._metrics = metrics
        self._ack_duration = metrics.source_ack_duration.labels(config.name)
        self._deliver: Deliver | None = None
        #: The consumer callbacks' tasks (aio-pika's) running a message now.
        self._handling: set[asyncio.Task[object]] = set()
        self._backoff = Backoff(initial_s=config.retry_initial_s, max_s=config.retry_max_s)
        self._redeliveries = 0
        self._supervisor: Supervisor[_Link] = Supervisor(
            config.name, "rabbitmq", mask_url(str(self.url)), self._connect,
            config.supervision, classify=connect_error, log=log, role="source",
            metrics=metrics,
        )  # fmt: skip

    @property
    def connected(self) -> bool:
        return self._supervisor.up

    async def start(self, deliver: Deliver) -> None:
        """Connect and consume; a broker that is away does not fail the start."""
        self._deliver = deliver
        await self._supervisor.start()

    async def stop(self) -> None:
        """Stop consuming, give events in flight ``grace_s``, then close: what did not
        finish stays unacked and the broker redelivers it."""
        link = self._supervisor.current()
        if isinstance(link, _Link):
            await link.cancel()
        if self._handling:
            _, late = await asyncio.wait(list(self._handling), timeout=self.config.grace_s)
            for task in late:
                task.cancel()  # unacked, so redelivered
            if late:
                await asyncio.wait(late)
        await self._supervisor.stop()

    async def healthcheck(self) -> Health:
        """A passive declare of the queue, bounded by ``health_timeout_s``."""
        return await self._supervisor.health()

    async def lag(self) -> int | None:
        """The queue's ready messages (a passive declare on the admin channel); None
        while disconnected."""
        link = self._supervisor.current()
        if not isinstance(link, _Link) or link.queue is None:
            return None
        queue = await link.admin.declare_queue(link.queue.name, passive=True)
        count: int | None = queue.declaration_result.message_count
        return count

    async def check(self) -> Health:
        """For ``evbridge check``: connect, look at the queue and the bindings' exchanges
        (passive declares: nothing is created, nothing consumed), disconnect."""
        config = self.config
        try:
            connection = await aio_pika.connect(self.url, timeout=config.connect_timeout_s)
        except Exception as exc:
            return Health(
                ok=False, detail=f"cannot connect: {connect_error(exc, describe(exc)).message}"
            )
        try:
            async with connection:
                for binding in config.bindings:
                    channel = await connection.channel(publisher_confirms=False)
                    try:
                        await channel.declare_exchange(binding.exchange, passive=True)
                    except aio_pika.exceptions.ChannelClosed:
                        return Health(
                            ok=False, detail=f"exchange {binding.exchange!r} does not exist"
                        )
                channel = await connection.channel(publisher_confirms=False)
                try:
                    queue = await channel.declare_queue(config.queue, passive=True)
                except aio_pika.exceptions.ChannelClosed:
                    if config.declare:
                        return Health(ok=True, detail=f"queue {config.queue!r} will be declared")
                    return Health(
                        ok=False, detail=f"queue {config.queue!r} does not exist (declare: false)"
                    )
                count = queue.declaration_result.message_count
                return Health(
                    ok=True, detail=f"queue {config.queue!r} exists, {count} messages ready"
                )
        except Exception as exc:
            return Health(ok=False, detail=f"check failed: {describe(exc)}")

    def describe(self) -> dict[str, object]:
        """What `/v1/info` shows of this source."""
        return {"name": self.name, "type": "rabbitmq", "queue": self.config.queue,
                "route": self.config.route, "on_error": self.config.on_error}  # fmt: skip

    async def _connect(self) -> _Link:
        config = self.config
        connection = await aio_pika.connect(self.url, timeout=config.connect_timeout_s)
        try:
            channel = await connection.channel(publisher_confirms=True)
            admin = await connection.channel(publisher_confirms=False)
            link = _Link(connection, channel, admin)
            await channel.set_qos(prefetch_count=config.prefetch)
            queue = await channel.declare_queue(
                config.queue, durable=True, passive=not config.declare
            )
            if config.declare:
                for binding in config.bindings:
                    for key in binding.routing_keys:
                        await queue.bind(binding.exchange, routing_key=key)
            link.queue = queue

            async def received(message: AbstractIncomingMessage) -> None:
                await self._received(link, message)

            link.consumer_tag = await queue.consume(received, no_ack=False)
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        return link

    async def _received(self, link: _Link, message: AbstractIncomingMessage) -> None:
        # Run here, in aio-pika's task for this message: a task of the source's own per
        # message cost more than a no-op handler. The broker hands out at most
        # ``prefetch`` unacked messages, so that bounds the work, not this callback.
        task = asyncio.current_task()
        assert task is not None
        self._handling.add(task)
        try:
            await self._handle(link, message)
        except Exception as exc:
            # Not the message's fault (decoding and the runner answer for that): a bug.
            # Unacked, so the broker redelivers it with the connection.
            log.error("rabbitmq source %s: delivery %s crashed: %s", self.name,
                      message.delivery_tag, describe(exc), exc_info=exc)  # fmt: skip
            self._metrics.error("source", type(exc).__name__)
        finally:
            self._handling.discard(task)

    async def _handle(self, link: _Link, message: AbstractIncomingMessage) -> None:
        assert self._deliver is not None
        config = self.config
        where = f"queue {config.queue!r} delivery {message.delivery_tag}"
        try:
            event = amqp_event(
                message.body,
                headers=message.headers,
                content_type=message.content_type,
                message_id=message.message_id,
                routing_key=message.routing_key or "",
                exchange=message.exchange or "",
                queue=config.queue,
                event_type=config.event_type,
            )
            incoming = Incoming(where, event=event, redelivered=bool(message.redelivered),
                                destination=config.queue, offset=message.delivery_tag)  # fmt: skip
        except Undecodable as exc:
            incoming = Incoming(where, problem=str(exc), redelivered=bool(message.redelivered),
                                destination=config.queue, offset=message.delivery_tag)  # fmt: skip
        verdict = await self._deliver(incoming)
        try:
            start = perf_counter()
            await self._settle(link, message, verdict)
            self._ack_duration.observe(perf_counter() - start)
        except Exception as exc:
            # The channel is gone: the broker redelivers the message on another.
            log.warning("rabbitmq source %s: %s not settled (%s): %s; the broker redelivers it",
                        self.name, where, verdict.action, describe(exc))  # fmt: skip

    async def _settle(
        self, link: _Link, message: AbstractIncomingMessage, verdict: Verdict
    ) -> None:
        if verdict.action == "ack":
            self._redeliveries = 0
            await message.ack()
        elif verdict.action == "redeliver":
            # A sink is down: pause before giving the message back, as a retry would.
            self._redeliveries += 1
            await asyncio.sleep(self._backoff.delay(self._redeliveries))
            await message.nack(requeue=True)
        elif self.config.dead_letter_exchange is None:
            await message.reject(requeue=False)
        else:
            try:
                await self._dead_letter(link, message, verdict.reason)
            except Exception:
                # Not dead-lettered, so not dropped either: it comes again.
                await message.nack(requeue=True)
                raise
            await message.ack()

    async def _dead_letter(
        self, link: _Link, message: AbstractIncomingMessage, reason: str
    ) -> None:
        """Publish the message as it came, with the reason, and wait for the confirm."""
        config = self.config
        assert config.dead_letter_exchange is not None
        headers = dict(message.headers or {})
        headers[REASON_HEADER] = reason[:1000]
        headers[SOURCE_HEADER] = self.name
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            message_id=message.message_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        if config.dead_letter_exchange:
            exchange = await link.channel.get_exchange(config.dead_letter_exchange, ensure=False)
        else:
            exchange = link.channel.default_exchange
        key = config.dead_letter_routing_key
        await exchange.publish(
            copy, routing_key=key if key is not None else message.routing_key or ""
        )
