"""The RabbitMQ sink: publisher confirms over a small channel pool, on aio-pika.

One AMQP connection carries a small pool of channels in publisher-confirm mode.
A ``publish_many`` call goes to the least busy channel, where its events are
written in order, many per socket write (`_aiormq.write_batch`), and their
confirms are awaited together; concurrent calls spread over the pool. Each
channel has at most ``max_inflight`` unconfirmed publishes. A broker nack, a
basic.return (unroutable with ``mandatory``) or a missing exchange fails that
event alone; a message that makes the broker close its channel is found by
`Isolation` (isolate.py) and fails alone too.

The connection is owned by the toolkit's `Supervisor`: it connects, reconnects
with the shared backoff after a broker restart or a dropped connection, probes
the link (a passive declare of the exchange) and makes publishes fail at once
with a retriable `SinkUnavailable` while down; `start()` never fails because
the broker is away. The message format and the failure semantics are
described in docs/rabbitmq.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Final

import aio_pika
import aiormq
from yarl import URL

from bridge.errors import SinkError, SinkUnavailable, Unencodable
from bridge.event import data_bytes
from bridge.metrics import METRICS, Metrics
from bridge.redact import mask_url
from bridge.results import Delivery
from bridge.sinks.base import Health, Outgoing, RouteOptions
from bridge.sinks.rabbitmq import _aiormq
from bridge.sinks.rabbitmq._aiormq import Confirm
from bridge.sinks.rabbitmq.config import RabbitConfig, RabbitRoute
from bridge.sinks.rabbitmq.connection import connection_url
from bridge.sinks.rabbitmq.errors import (
    channel_gone,
    connect_error,
    not_found,
    publish_error,
)
from bridge.sinks.rabbitmq.isolate import Isolation, Results
from bridge.sinks.rabbitmq.link import RabbitLink, Slot, confirm_channel
from bridge.sinks.rabbitmq.message import (
    AmqpMessage,
    amqp_properties,
    shortstr,
    structured_body,
)
from bridge.sinks.toolkit import Supervisor, TaskGroup, describe

log = logging.getLogger("bridge.sinks.rabbitmq")

#: A write to the socket carries at most about this many body bytes.
CHUNK_BYTES: Final = 256 * 1024


def broker_url(config: RabbitConfig, env: Mapping[str, str] | None = None) -> URL:
    """The URL to connect to: the password from ``password_env``, heartbeat and name added."""
    return connection_url(
        config, key=f"sinks.{config.name}.password_env", client=f"evbridge {config.name}", env=env
    )


class RabbitSink:
    """Publishes events to RabbitMQ with confirms; see the module docstring."""

    def __init__(self, config: RabbitConfig) -> None:
        self.name = config.name
        self.config = config
        self.url = broker_url(config)  # the password is read now: a missing one fails the load
        self.exchange = config.exchange
        #: Late channel closes; made by `start`, closed by `stop`.
        self._chores: TaskGroup | None = None
        self._metrics = METRICS
        self._isolation = Isolation(config.name, config.mandatory, config.max_inflight)
        self._calls: set[asyncio.Task[list[Delivery | SinkError]]] = set()
        self._supervisor: Supervisor[RabbitLink] = Supervisor(
            config.name, "rabbitmq", mask_url(str(self.url)), self._connect, config.supervision,
            classify=connect_error, log=log,
        )  # fmt: skip

    def bind_metrics(self, metrics: Metrics) -> None:
        """Count in the metrics of the bus that built this sink (`MetricsAware`)."""
        self._metrics = metrics
        self._supervisor.bind_metrics(metrics)

    @property
    def connected(self) -> bool:
        return self._supervisor.up

    @property
    def pending_confirms(self) -> int:
        """Publishes written to the broker and not confirmed yet, over all channels."""
        link = self._supervisor.current()
        return link.inflight if isinstance(link, RabbitLink) else 0

    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Start connecting; wait (at most ``connect_timeout_s``) for the first attempt.

        An unreachable broker does not fail the start: the sink is then
        unhealthy, fails publishes retriably and keeps trying to connect.
        """
        if self._chores is None:
            self._chores = TaskGroup(f"rabbitmq sink {self.name}", log, metrics=self._metrics)
        await self._supervisor.start()

    async def stop(self) -> None:
        """Give calls in flight up to ``confirm_timeout_s`` for their confirms, then close.

        Every event of a call still running gets an outcome: a `Delivery`, or a
        retriable error when the connection closed before its confirm.
        """
        if self._calls:
            await asyncio.wait(list(self._calls), timeout=self.config.confirm_timeout_s)
        await self._supervisor.stop()
        chores, self._chores = self._chores, None
        if chores is not None:
            await chores.close()

    async def healthcheck(self) -> Health:
        """A passive declare of the configured exchange, bounded by ``health_timeout_s``."""
        health = await self._supervisor.health()
        link = self._supervisor.current()
        if health.ok and isinstance(link, RabbitLink) and self.exchange:
            where = f"exchange {self.exchange!r} on {mask_url(str(self.url))}"
            if not link.exchange_found:
                return Health(ok=False, detail=f"{where} does not exist")
            return Health(ok=True, detail=where)
        return health

    async def check_destination(self, options: RouteOptions, templated: frozenset[str]) -> Health:
        """Whether the route's exchange exists (a passive declare). AMQP has no way to
        ask whether a queue is bound for a routing key short of publishing, so that is
        said, not checked."""
        assert isinstance(options, RabbitRoute)
        exchange = self.exchange if options.exchange is None else options.exchange
        if "exchange" in templated:
            return Health(ok=True, detail=f"exchange {exchange!r} is a template: checked per event")
        link = self._supervisor.current()
        if isinstance(link, SinkError):
            return Health(ok=False, detail=link.message)
        try:
            async with asyncio.timeout(self.config.health_timeout_s):
                # "" is the default exchange: it always exists, and no declare may name it.
                found = await link.exchange_exists(exchange, fresh=exchange != "")
        except Exception as exc:
            return Health(ok=False, detail=f"cannot check exchange {exchange!r}: {describe(exc)}")
        if not found:
            return Health(ok=False, detail=not_found(exchange).message)
        return Health(
            ok=True,
            detail=f"exchange {exchange!r} exists; whether a queue is bound for routing key "
            f"{options.routing_key!r}{' (a template)' if 'routing_key' in templated else ''} "
            "cannot be checked without publishing (an event no queue takes is answered 502 "
            "unroutable)",
        )

    async def _connect(self) -> RabbitLink:
        config, chores = self.config, self._chores
        assert chores is not None, "connecting before start()"
        connection = await aio_pika.connect(self.url, timeout=config.connect_timeout_s)
        try:
            admin = await connection.channel(publisher_confirms=False)
            slots = [
                Slot(await confirm_channel(connection), config.max_inflight)
                for _ in range(config.channels)
            ]
            link = RabbitLink(
                connection, admin, slots, self.exchange, config.connect_timeout_s, chores
            )
            await self._declare(link)
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        return link

    async def _declare(self, link: RabbitLink) -> None:
        """Declare the configured exchange (durable) or check that it exists."""
        name, config = self.exchange, self.config
        if not name:
            return
        if config.declare and not name.startswith("amq."):
            channel = await link.connection.channel(publisher_confirms=False)
            try:
                await channel.declare_exchange(
                    name, aio_pika.ExchangeType(config.exchange_type), durable=True
                )
                link.known.add(name)
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                log.error(
                    "rabbitmq sink %s: exchange %r exists with other settings than "
                    "type %r, durable (%s); publishing to it anyway",
                    self.name,
                    name,
                    config.exchange_type,
                    exc,
                )
            finally:
                if not channel.is_closed:
                    await channel.close()
        link.exchange_found = await link.exchange_exists(name)
        if not link.exchange_found:
            log.error("rabbitmq sink %s: exchange %r does not exist", self.name, name)

    # --- publishing ---------------------------------------------------------

    async def publish_many(self, items: Sequence[Outgoing]) -> list[Delivery | SinkError]:
        link = self._supervisor.current()
        if isinstance(link, SinkError):
            return [link] * len(items)
        call = asyncio.ensure_future(self._publish_many(link, items))
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)
        return await call  # the caller's cancellation cancels the call too

    async def _publish_many(
        self, link: RabbitLink, items: Sequence[Outgoing]
    ) -> list[Delivery | SinkError]:
        results: Results = [None] * len(items)
        messages = await self._prepare(link, items, results)
        if messages:
            deadline = asyncio.get_running_loop().time() + self.config.confirm_timeout_s
            slot = link.pick()
            sent: list[tuple[AmqpMessage, Confirm]] = []
            unsent: list[AmqpMessage] = []
            try:
                await self._send(link, slot, messages, sent)
            except Exception as exc:
                unsent = messages[len(sent) :]
                if not (channel_gone(exc) and not link.connection.is_closed):
                    failure = SinkUnavailable(f"publishing failed: {describe(exc)}")
                    for m in unsent:
                        results[m.index] = failure
                    unsent = []
                    self._supervisor.suspect()
            except BaseException:  # cancelled: nobody waits for these confirms any more
                for _, confirm in sent:
                    confirm.cancel()
                raise
            closed = await self._confirmed(link, sent, results, deadline)
            if closed or unsent:
                # Written after the channel closed, or caught in a close: not refused.
                suspects = sorted([*closed, *unsent], key=lambda m: m.index)
                await self._isolation.isolate(link, suspects, results, deadline)
        return [r if r is not None else SinkUnavailable("not published") for r in results]

    async def _prepare(
        self, link: RabbitLink, items: Sequence[Outgoing], results: Results
    ) -> list[AmqpMessage]:
        """The messages to send, in order; events that cannot go get their error now."""
        exchanges = [self._exchange_of(item) for item in items]
        missing = await self._missing_exchanges(link, exchanges)
        persistent = self.config.persistent
        structured = self.config.mode == "structured"
        messages: list[AmqpMessage] = []
        for i, (item, exchange) in enumerate(zip(items, exchanges, strict=True)):
            if exchange in missing:
                results[i] = missing[exchange]
                continue
            options = item.options
            assert isinstance(options, RabbitRoute)
            try:
                shortstr(exchange, "the exchange name", "exchange")
                shortstr(options.routing_key, "the routing key", "routing_key")
                properties = amqp_properties(
                    item.event, item.key, persistent=persistent, structured=structured
                )
                body = (
                    structured_body(item.event, item.key) if structured else data_bytes(item.event)
                )
            except SinkError as exc:
                results[i] = exc
                continue
            except (TypeError, ValueError, OverflowError) as exc:
                # Data a handler built that JSON cannot hold: this event's failure alone.
                results[i] = Unencodable(f"the event's data cannot be encoded: {exc}")
                continue
            messages.append(AmqpMessage(i, exchange, options.routing_key, properties, body))
        return messages

    async def _send(
        self,
        link: RabbitLink,
        slot: Slot,
        messages: list[AmqpMessage],
        sent: list[tuple[AmqpMessage, Confirm]],
    ) -> None:
        """Write ``messages`` in order on one channel, as many per write as its room allows."""
        channel = await slot.underlay(link.connection)
        write = _aiormq.writer(channel)
        mandatory = self.config.mandatory
        pos, total = 0, len(messages)
        while pos < total:
            room = await slot.room()
            chunk: list[AmqpMessage] = []
            ids: set[str] = set()
            size = 0
            while pos < total and len(chunk) < room and size < CHUNK_BYTES:
                message = messages[pos]
                if message.message_id in slot.ids or message.message_id in ids:
                    break
                chunk.append(message)
                ids.add(message.message_id)
                size += len(message.body)
                pos += 1
            if not chunk:
                # The same event is still in flight on this channel: wait for its confirm.
                await asyncio.wait([slot.ids[messages[pos].message_id]])
                continue
            confirms = await write(channel, chunk, mandatory)
            for message, confirm in zip(chunk, confirms, strict=True):
                slot.track(message.message_id, confirm)
                sent.append((message, confirm))

    async def _confirmed(
        self,
        link: RabbitLink,
        sent: list[tuple[AmqpMessage, Confirm]],
        results: Results,
        deadline: float,
    ) -> list[AmqpMessage]:
        """Wait (until ``deadline``) for the confirms and turn each into its result;
        returns the messages the broker's closing of the channel cut off instead."""
        confirms = [confirm for _, confirm in sent]
        try:
            if confirms:
                timeout = max(deadline - asyncio.get_running_loop().time(), 0.0)
                await asyncio.wait(confirms, timeout=timeout)
        finally:
            for confirm in confirms:
                if not confirm.done():  # timed out, or this call was cancelled
                    confirm.cancel()
        name = self.name
        closed: list[AmqpMessage] = []
        for message, confirm in sent:
            if confirm.cancelled():
                results[message.index] = publish_error(
                    TimeoutError(), message.exchange, message.routing_key
                )
                self._supervisor.suspect()
            elif (exc := confirm.exception()) is not None:
                if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
                    link.forget_exchanges()  # an exchange was deleted under us
                if channel_gone(exc) and not link.connection.is_closed:
                    closed.append(message)
                    continue
                results[message.index] = publish_error(exc, message.exchange, message.routing_key)
            else:
                results[message.index] = Delivery(
                    name, message.exchange, routing_key=message.routing_key
                )
        return closed

    def _exchange_of(self, item: Outgoing) -> str:
        options = item.options
        if not isinstance(options, RabbitRoute):
            kind = type(options).__name__
            raise TypeError(f"rabbitmq sink {self.name!r} got route options of type {kind}")
        return self.exchange if options.exchange is None else options.exchange

    async def _missing_exchanges(
        self, link: RabbitLink, exchanges: list[str]
    ) -> dict[str, SinkError]:
        unknown = {e for e in exchanges if e not in link.known}
        missing: dict[str, SinkError] = {}
        for exchange in unknown:
            try:
                found = await link.exchange_exists(exchange)
            except Exception as exc:
                missing[exchange] = SinkUnavailable(
                    f"cannot check that exchange {exchange!r} exists: {describe(exc)}"
                )
                continue
            if not found:
                missing[exchange] = not_found(exchange)
        return missing
