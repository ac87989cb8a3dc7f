"""The RabbitMQ sink (``type: rabbitmq``), built on aio-pika.

One AMQP connection carries a small pool of channels in publisher-confirm mode.
A ``publish_many`` call goes to the least busy channel, where its events are
written in order, many per socket write, and their confirms are awaited
together; concurrent calls spread over the pool. Each channel has at most
``max_inflight`` unconfirmed publishes. A broker nack, a basic.return
(unroutable with ``mandatory``) or a missing exchange fails that event alone.

A supervisor task owns the connection: it connects, reconnects with backoff
after a broker restart or a dropped connection, and swaps the lifecycle state
(`_Up` or `_Down`). While it is `_Down`, publishes fail at once with a
retriable `SinkUnavailable`; `start()` never fails because the broker is away.
The message format (properties and ``cloudEvents:*`` headers) and the failure
semantics are described in docs/rabbitmq.md.

When the broker closes a channel over one message (``PRECONDITION_FAILED``, say),
every unconfirmed publish on it fails with the same error, whoever caused it. The
sink then republishes the call's unconfirmed messages on fresh private channels,
halving the group that closed one each time, until the message that closes a
channel on its own is found: that one gets the broker's error, the others their
confirms (`_isolate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final, Literal

import aio_pika
import aiormq
import msgspec
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader
from yarl import URL

from bridge.errors import (
    ConfigError,
    InvalidEvent,
    SinkError,
    SinkRejected,
    SinkUnavailable,
    TemplateError,
    Unencodable,
)
from bridge.event import (
    Event,
    data_bytes,
    epoch_seconds,
    to_structured,
    wire_content_type,
)
from bridge.results import Delivery
from bridge.sinks.base import Health, Outgoing, RouteOptions, SinkConfig, SinkType

log = logging.getLogger("bridge.sinks.rabbitmq")

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
ExchangeName = Annotated[str, msgspec.Meta(max_length=255)]

#: AMQP short strings (routing key, exchange, most properties) hold at most 255 bytes.
SHORTSTR_MAX: Final = 255
RECONNECT_MIN_S: Final = 0.1
CLOSE_TIMEOUT_S: Final = 5.0
KNOWN_EXCHANGES_MAX: Final = 4096
#: A write to the socket carries at most about this many body bytes.
CHUNK_BYTES: Final = 256 * 1024
#: The largest per-message TTL (``expiration``) RabbitMQ accepts: ten years in ms. Above it
#: the broker closes the channel with ``PRECONDITION_FAILED invalid expiration``.
MAX_EXPIRATION_MS: Final = 315_360_000_000
# Channel-close reply codes after which the same message may go through later (AMQP 0-9-1:
# 405 resource-locked, 506 resource-error); the others (403, 404, 406, ...) are the message's.
_TRANSIENT_CLOSE: Final = frozenset({405, 506})


class RabbitConfig(SinkConfig, frozen=True, kw_only=True):
    """``type: rabbitmq``. See docs/rabbitmq.md for every field."""

    url: Annotated[str, msgspec.Meta(pattern=r"^amqps?://")] = "amqp://guest:guest@localhost:5672/"
    password_env: str | None = None
    exchange: ExchangeName = "evbridge"
    exchange_type: Literal["topic", "direct", "fanout", "headers"] = "topic"
    declare: bool = True
    persistent: bool = True
    mode: Literal["binary", "structured"] = "binary"
    mandatory: bool = True
    max_inflight: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 1000
    channels: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4
    connect_timeout_s: PositiveFloat = 5.0
    confirm_timeout_s: PositiveFloat = 15.0
    health_timeout_s: PositiveFloat = 2.0
    heartbeat_s: Annotated[int, msgspec.Meta(ge=0, le=3600)] = 15
    reconnect_max_s: PositiveFloat = 5.0

    #: The URL may carry ``user:password@``; prefer ``password_env``.
    secret_fields: ClassVar[tuple[str, ...]] = ("url",)


class RabbitRoute(RouteOptions, frozen=True, kw_only=True):
    """``exchange`` overrides the sink's exchange; ``routing_key`` is a template."""

    exchange: ExchangeName | None = None
    routing_key: str = "{type}"

    #: The broker's own exchanges: a template never renders into one.
    internal: ClassVar[Mapping[str, tuple[str, ...]]] = {"exchange": ("amq.*",)}

    def destination(self, sink: str) -> str:
        return self.exchange if self.exchange is not None else sink

    def check(self, event: Event | None) -> None:
        """Routing key and exchange fit an AMQP short string (255 bytes); so do the
        event attributes sent as AMQP properties, and ``ttl_ms`` fits RabbitMQ's
        expiration limit (`MAX_EXPIRATION_MS`). A 400 instead of a publish error."""
        for field, value in (("routing_key", self.routing_key), ("exchange", self.exchange)):
            if value is not None and _too_long(value):
                raise TemplateError(
                    f"{field} {value[:60]!r}... is {len(value.encode())} bytes as rendered; "
                    f"AMQP allows {SHORTSTR_MAX}",
                    field=field,
                )
        if event is None:
            return
        if event.ttl_ms is not None and event.ttl_ms > MAX_EXPIRATION_MS:
            raise InvalidEvent(_ttl_problem(event.ttl_ms), field="ttl_ms")
        for field, value in (
            ("type", event.type),
            ("id", event.id),
            ("source", event.source),
            ("correlation_id", event.correlation_id),
            ("datacontenttype", event.datacontenttype),
        ):
            if value is not None and _too_long(value):
                raise InvalidEvent(
                    f"{field} is {len(value.encode())} bytes; RabbitMQ routes carry it in an "
                    f"AMQP property of at most {SHORTSTR_MAX} bytes",
                    field=field,
                )


def _too_long(value: str) -> bool:
    return len(value) > SHORTSTR_MAX // 4 and len(value.encode()) > SHORTSTR_MAX


def _ttl_problem(ttl_ms: int) -> str:
    return (
        f"ttl_ms is {ttl_ms}; RabbitMQ takes a message expiration of at most "
        f"{MAX_EXPIRATION_MS} ms (ten years)"
    )


# --- the message ------------------------------------------------------------


def _shortstr(value: str, what: str, field: str) -> str:
    if len(value) > SHORTSTR_MAX // 4 and len(value.encode()) > SHORTSTR_MAX:
        raise SinkRejected(
            f"{what} is longer than AMQP's {SHORTSTR_MAX}-byte limit", code="too_long", field=field
        )
    return value


def _timestamp(event: Event) -> datetime | None:
    """The event time for the AMQP ``timestamp`` property (whole seconds, none before 1970)."""
    seconds = epoch_seconds(event.time)
    return datetime.fromtimestamp(seconds, UTC) if seconds >= 0 else None


#: Prefixes of the AMQP CloudEvents binding's attribute names (both are valid there).
_CE_PREFIXES: Final = ("cloudevents:", "cloudevents_")
STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json; charset=utf-8"
_json_encode: Final = msgspec.json.Encoder().encode


def _transport_headers(event: Event) -> dict[str, Any]:
    """The event's own headers, without names of the binding's attribute namespace: a
    transport header cannot forge an attribute (compared case-insensitively)."""
    headers: dict[str, Any] = {}
    for name, value in event.headers.items():
        if name[:12].lower() in _CE_PREFIXES:
            continue
        headers[_shortstr(name, f"header name {name[:40]!r}", "headers")] = value
    return headers


def amqp_headers(event: Event, key: str | None) -> dict[str, Any]:
    """The header table in binary mode: the event's own headers, then the
    ``cloudEvents:*`` attributes (extensions included, as AMQP booleans, integers
    or long strings)."""
    headers = _transport_headers(event)
    headers["cloudEvents:specversion"] = event.specversion
    headers["cloudEvents:id"] = event.id
    if event.source is not None:
        headers["cloudEvents:source"] = event.source
    headers["cloudEvents:type"] = event.type
    headers["cloudEvents:time"] = event.time
    if event.subject is not None:
        headers["cloudEvents:subject"] = event.subject
    if key is not None:
        headers["cloudEvents:partitionkey"] = key
    if event.dataschema is not None:
        headers["cloudEvents:dataschema"] = event.dataschema
    if event.correlation_id is not None:
        headers["cloudEvents:correlationid"] = event.correlation_id
    if event.ttl_ms is not None:
        headers["cloudEvents:ttl"] = str(event.ttl_ms)
    for name, value in event.extensions.items():
        headers["cloudEvents:" + name] = value
    return headers


def structured_body(event: Event, key: str | None) -> bytes:
    """The event in the CloudEvents JSON format; ``partitionkey`` is the route's key."""
    envelope = to_structured(event)
    if key is not None:
        envelope["partitionkey"] = key
    return _json_encode(envelope)


def amqp_properties(
    event: Event, key: str | None, *, persistent: bool, structured: bool = False
) -> Basic.Properties:
    """The AMQP message properties of an event; `SinkRejected` if one cannot be encoded.

    Binary mode: ``content_type`` is the data's content type (none when unset and
    the data is raw bytes) and the attributes are ``cloudEvents:*`` headers.
    Structured mode: ``content_type`` is the JSON event format's and the header
    table holds only the event's transport headers (the body has the attributes).
    """
    if structured:
        content_type: str | None = STRUCTURED_CONTENT_TYPE
        headers = _transport_headers(event)
    else:
        content_type = wire_content_type(event)
        if content_type is not None:
            content_type = _shortstr(content_type, "datacontenttype", "datacontenttype")
        headers = amqp_headers(event, key)
    if event.ttl_ms is not None and event.ttl_ms > MAX_EXPIRATION_MS:
        # Sent anyway, it would close the channel under every other unconfirmed publish.
        raise SinkRejected(_ttl_problem(event.ttl_ms), code="invalid_ttl", field="ttl_ms")
    return Basic.Properties(
        content_type=content_type,
        headers=headers,
        delivery_mode=2 if persistent else 1,
        correlation_id=(
            None
            if event.correlation_id is None
            else _shortstr(event.correlation_id, "correlation_id", "correlation_id")
        ),
        expiration=None if event.ttl_ms is None else str(event.ttl_ms),
        message_id=_shortstr(event.id, "id", "id"),
        timestamp=_timestamp(event),
        message_type=_shortstr(event.type, "type", "type"),
        app_id=None if event.source is None else _shortstr(event.source, "source", "source"),
    )


# --- errors -----------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"


def publish_error(exc: BaseException, exchange: str, routing_key: str) -> SinkError:
    """The per-event error for an exception raised while publishing one message."""
    where = f"exchange {exchange!r} with routing key {routing_key!r}"
    if isinstance(exc, aiormq.exceptions.PublishError):
        frame = exc.frame
        reply = getattr(frame, "reply_text", "") or "returned"
        return SinkRejected(
            f"the broker returned the message as unroutable ({reply}): "
            f"no queue is bound to {where}",
            code="unroutable",
        )
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        return SinkError(
            f"the broker refused the message for {where} (basic.nack)",
            retriable=True,
            code="nacked",
        )
    if isinstance(exc, TimeoutError):
        return SinkUnavailable(
            f"no confirm from the broker for {where} in time", code="confirm_timeout"
        )
    if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
        return SinkUnavailable(
            f"the channel closed while publishing to {where}: {exc}", code="channel_closed"
        )
    return SinkUnavailable(f"publishing to {where} failed: {_describe(exc)}")


def closed_by_broker(exc: BaseException) -> bool:
    """Whether ``exc`` is the broker closing a channel (not the connection going away)."""
    return isinstance(exc, aiormq.exceptions.ChannelClosed) and not isinstance(
        exc, aiormq.exceptions.DuplicateConsumerTag
    )


def _close_code(exc: aiormq.exceptions.ChannelClosed) -> int | None:
    codes = {
        aiormq.exceptions.ChannelAccessRefused: 403,
        aiormq.exceptions.ChannelNotFoundEntity: 404,
        aiormq.exceptions.ChannelLockedResource: 405,
        aiormq.exceptions.ChannelPreconditionFailed: 406,
    }
    found = codes.get(type(exc))
    if found is None and exc.args and isinstance(exc.args[0], int):
        found = exc.args[0]
    return found


def own_close_error(exc: aiormq.exceptions.ChannelClosed, exchange: str, key: str) -> SinkError:
    """The error of the one message that made the broker close a channel by itself."""
    where = f"exchange {exchange!r} with routing key {key!r}"
    if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
        return _not_found(exchange)
    code = _close_code(exc)
    text = str(exc.args[-1]) if exc.args else _describe(exc)
    message = f"the broker closed the channel over this message for {where}: {text}"
    if code in _TRANSIENT_CLOSE:
        return SinkError(message, retriable=True, code="channel_closed")
    return SinkRejected(message, code="broker_refused")


def _channel_gone(exc: BaseException) -> bool:
    """A write failed because the broker had closed the channel (not the connection)."""
    return closed_by_broker(exc) or isinstance(exc, aiormq.exceptions.ChannelInvalidStateError)


def _not_found(exchange: str) -> SinkRejected:
    return SinkRejected(
        f"exchange {exchange!r} does not exist (declare it, or fix the route)",
        code="exchange_not_found",
    )


# --- publishing on one channel -------------------------------------------------


class _Message:
    """One event ready to go out: where to, its properties and body, its place in the call."""

    __slots__ = ("body", "exchange", "index", "message_id", "properties", "routing_key")

    def __init__(
        self,
        index: int,
        exchange: str,
        routing_key: str,
        properties: Basic.Properties,
        body: bytes,
    ) -> None:
        self.index = index
        self.exchange = exchange
        self.routing_key = routing_key
        self.properties = properties
        self.message_id: str = properties.message_id or ""
        self.body = body


Confirm = asyncio.Future[Any]


def _fast_path(channel: aiormq.Channel) -> bool:
    """Whether ``channel`` has the aiormq internals `_write_batch` relies on (6.8 to 7.x)."""
    return all(hasattr(channel, name) for name in _AIORMQ_INTERNALS)


_AIORMQ_INTERNALS: Final = (
    "lock",
    "delivery_tag",
    "confirmations",
    "message_id_delivery_tag",
    "write_queue",
    "max_content_size",
    "create_future",
    "number",
)


def _forget(ids: dict[str, int], message_id: str, tag: int, _: Confirm) -> None:
    if ids.get(message_id) == tag:
        del ids[message_id]


async def _write_batch(
    channel: aiormq.Channel, messages: Sequence[_Message], mandatory: bool
) -> list[Confirm]:
    """Publish ``messages`` in one socket write; one confirm future per message.

    ``basic_publish`` takes the channel lock, queues one write and creates one
    task per message; for a batch that costs about three times the CPU, on the
    bridge and on the broker. This does the same bookkeeping (delivery tags,
    confirm futures, the message-id map aiormq uses to route a basic.return)
    once per batch, with aiormq's own frame marshalling.
    """
    frames: list[Any] = []
    size = channel.max_content_size
    for m in messages:
        frames.append(
            Basic.Publish(exchange=m.exchange, routing_key=m.routing_key, mandatory=mandatory)
        )
        frames.append(ContentHeader(properties=m.properties, body_size=len(m.body)))
        body = m.body
        frames.extend(ContentBody(body[i : i + size]) for i in range(0, len(body), size))
    payload = ChannelFrame.marshall(channel_number=channel.number, frames=frames)
    confirms: list[Confirm] = []
    async with channel.lock:
        # Between the broker's channel.close and ``is_closed``, aiormq has already queued its
        # close-ok: a publish queued behind it would reach the broker on a channel it no
        # longer has, and the broker closes the whole connection (504 CHANNEL_ERROR).
        if channel.is_closed or getattr(channel, "_close_exception", None) is not None:
            raise aiormq.exceptions.ChannelInvalidStateError(f"channel {channel.number} is closed")
        first = channel.delivery_tag
        ids = channel.message_id_delivery_tag
        for m in messages:
            channel.delivery_tag += 1
            tag = channel.delivery_tag
            confirm = channel.create_future()
            channel.confirmations[tag] = confirm
            ids[m.message_id] = tag
            confirm.add_done_callback(functools.partial(_forget, ids, m.message_id, tag))
            confirms.append(confirm)
        try:
            await channel.write_queue.put(payload)
        except BaseException:
            # Nothing reached the broker: hand the delivery tags back.
            channel.delivery_tag = first
            for tag, confirm in enumerate(confirms, first + 1):
                channel.confirmations.pop(tag, None)
                confirm.cancel()
            raise
    return confirms


async def _publish_each(
    channel: aiormq.Channel, messages: Sequence[_Message], mandatory: bool
) -> list[Confirm]:
    """The portable path (one ``basic_publish`` task per message), if aiormq changed."""
    tasks: list[Confirm] = []
    for m in messages:
        task = asyncio.ensure_future(
            channel.basic_publish(
                m.body,
                exchange=m.exchange,
                routing_key=m.routing_key,
                properties=m.properties,
                mandatory=mandatory,
                wait=False,
            )
        )
        task.add_done_callback(_retrieve)  # read even if the caller is gone
        tasks.append(task)
    return tasks


def _retrieve(task: Confirm) -> None:
    if not task.cancelled():
        task.exception()


class _Slot:
    """One publishing channel and the confirms outstanding on it (at most ``limit``).

    aiormq matches a basic.return to its publish by message id, so one id is
    never in flight twice on one channel: a resent event waits for the first.
    """

    __slots__ = ("_room", "channel", "ids", "inflight", "limit", "reopening")

    def __init__(self, channel: AbstractChannel, limit: int) -> None:
        self.channel = channel
        self.limit = limit
        self.inflight = 0
        self.ids: dict[str, Confirm] = {}
        self.reopening = asyncio.Lock()
        self._room = asyncio.Event()
        self._room.set()

    async def underlay(self, connection: AbstractConnection) -> aiormq.Channel:
        """The open aiormq channel, reopening the aio-pika channel if the broker closed it."""
        if self.channel.is_closed:
            async with self.reopening:
                if self.channel.is_closed:
                    self.channel = await _confirm_channel(connection)
        channel = await self.channel.get_underlay_channel()
        assert isinstance(channel, aiormq.Channel)
        return channel

    async def room(self) -> int:
        """Wait until fewer than ``limit`` confirms are outstanding; how many more may go."""
        while self.inflight >= self.limit:
            self._room.clear()
            await self._room.wait()
        return self.limit - self.inflight

    def track(self, message_id: str, confirm: Confirm) -> None:
        self.inflight += 1
        self.ids[message_id] = confirm
        confirm.add_done_callback(functools.partial(self._settle, message_id))

    def _settle(self, message_id: str, confirm: Confirm) -> None:
        self.inflight -= 1
        if self.ids.get(message_id) is confirm:
            del self.ids[message_id]
        self._room.set()


async def _confirm_channel(connection: AbstractConnection) -> AbstractChannel:
    # on_return_raises: without it aio-pika completes a returned publish normally.
    return await connection.channel(publisher_confirms=True, on_return_raises=True)


# --- lifecycle states -----------------------------------------------------------


class _Up:
    """Connected: the connection, the channel pool and the exchanges known to exist."""

    def __init__(
        self,
        connection: AbstractConnection,
        admin: AbstractChannel,
        slots: list[_Slot],
        check_timeout: float,
    ) -> None:
        self.connection = connection
        self.slots = slots
        self.check_timeout = check_timeout
        self.known: set[str] = {""}  # "" is the default exchange: it always exists
        self._admin: AbstractChannel | None = admin
        self._admin_lock = asyncio.Lock()
        self._checks: dict[str, asyncio.Future[bool]] = {}
        self._next = 0
        #: Set (to the cause, if any) when the connection closes.
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        connection.close_callbacks.add(self._on_close)

    def _on_close(self, _sender: object, exc: BaseException | None = None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    def pick(self) -> _Slot:
        """The least busy channel; ties rotate, so idle channels share the work."""
        slots = self.slots
        start = self._next = (self._next + 1) % len(slots)
        best = slots[start]
        for i in range(1, len(slots)):
            slot = slots[(start + i) % len(slots)]
            if slot.inflight < best.inflight:
                best = slot
        return best

    async def exchange_exists(self, name: str, *, fresh: bool = False) -> bool:
        """Whether exchange ``name`` exists: from the cache, else (or if ``fresh``) a
        passive declare, shared by concurrent callers and bounded by ``check_timeout``."""
        if not fresh and name in self.known:
            return True
        pending = self._checks.get(name)
        if pending is None:
            pending = asyncio.ensure_future(self._passive_declare(name))
            self._checks[name] = pending
            pending.add_done_callback(lambda _: self._checks.pop(name, None))
        found = await asyncio.shield(pending)
        if not found:
            self.known.discard(name)
        elif name not in self.known:
            if len(self.known) >= KNOWN_EXCHANGES_MAX:
                self.known = {""}
            self.known.add(name)
        return found

    async def _passive_declare(self, name: str) -> bool:
        async with self._admin_lock:
            admin = self._admin
            try:
                async with asyncio.timeout(self.check_timeout):
                    if admin is None or admin.is_closed:
                        admin = self._admin = await self.connection.channel(
                            publisher_confirms=False
                        )
                    await admin.get_exchange(name, ensure=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                self._admin = None  # the broker closed the channel with 404
                return False
            except BaseException:
                # Timed out or cancelled mid-call: the channel may still get a late reply.
                self._admin = None
                if admin is not None:
                    _close_later(admin)
                raise
            return True

    def forget_exchanges(self) -> None:
        self.known = {""}

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.connection.close()


_background: set[asyncio.Task[Any]] = set()


def _close_later(channel: AbstractChannel) -> None:
    async def close() -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await channel.close()

    task = asyncio.ensure_future(close())
    _background.add(task)
    task.add_done_callback(_background.discard)


class _Down:
    """Not connected (yet, or any more): every publish fails at once, retriably."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def error(self) -> SinkError:
        return SinkUnavailable(self.reason)


# --- the sink -----------------------------------------------------------------


def broker_url(config: RabbitConfig, env: Mapping[str, str] | None = None) -> URL:
    """The URL to connect to: the password from ``password_env``, heartbeat and name added."""
    env = os.environ if env is None else env
    url = URL(config.url)
    if config.password_env is not None:
        password = env.get(config.password_env)
        if not password:
            where = f"sinks.{config.name}.password_env"
            raise ConfigError(
                f"{where}: the environment variable {config.password_env!r} is not set or empty",
                field=where,
            )
        url = url.with_password(password)
        if url.user is None:
            url = url.with_user("guest")
    query = dict(url.query)
    query.setdefault("heartbeat", str(config.heartbeat_s))
    query.setdefault("name", f"evbridge {config.name}")
    return url.with_query(query)


def redacted(url: URL) -> str:
    """The URL as logs and health details show it: no password, no query."""
    shown = url.with_query(None)
    return str(shown.with_password("***") if shown.password else shown)


class RabbitSink:
    """Publishes events to RabbitMQ with confirms; see the module docstring."""

    def __init__(self, config: RabbitConfig) -> None:
        self.name = config.name
        self.config = config
        self.url = broker_url(config)
        self.exchange = config.exchange
        self._state: _Up | _Down = _Down(f"rabbitmq sink {self.name!r} is not started")
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return isinstance(self._state, _Up)

    @property
    def pending_confirms(self) -> int:
        """Publishes written to the broker and not confirmed yet, over all channels."""
        state = self._state
        return sum(slot.inflight for slot in state.slots) if isinstance(state, _Up) else 0

    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Start connecting; wait (at most ``connect_timeout_s``) for the first attempt.

        An unreachable broker does not fail the start: the sink is then
        unhealthy, fails publishes retriably and keeps trying to connect.
        """
        if self._supervisor is not None:
            return
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._supervisor = asyncio.create_task(self._supervise(first), name=f"rabbitmq-{self.name}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.connect_timeout_s + 1.0):
                await asyncio.shield(first)

    async def stop(self) -> None:
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is None:
            return
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)
        log.info("rabbitmq sink %s stopped", self.name)

    async def _supervise(self, first: asyncio.Future[None]) -> None:
        delay = RECONNECT_MIN_S
        config = self.config
        up: _Up | None = None
        try:
            while True:
                try:
                    up = await self._connect()
                except Exception as exc:
                    self._set_down(f"cannot connect to {redacted(self.url)}: {_describe(exc)}")
                    if not first.done():
                        first.set_result(None)
                    await asyncio.sleep(delay)  # backoff between attempts
                    delay = min(delay * 2, config.reconnect_max_s)
                    continue
                self._state = up
                log.info(
                    "rabbitmq sink %s connected to %s (%d channels, exchange %r)",
                    self.name,
                    redacted(self.url),
                    len(up.slots),
                    self.exchange,
                )
                if not first.done():
                    first.set_result(None)
                delay = RECONNECT_MIN_S
                cause = await up.lost
                why = _describe(cause) if cause is not None else "closed"
                self._set_down(f"lost the connection to {redacted(self.url)}: {why}")
                await up.close()
                up = None
        finally:
            self._state = _Down(f"rabbitmq sink {self.name!r} is stopped")
            if not first.done():
                first.set_result(None)
            if up is not None:
                await up.close()

    def _set_down(self, reason: str) -> None:
        previous = self._state
        self._state = _Down(reason)
        if isinstance(previous, _Down) and previous.reason == reason:
            log.debug("rabbitmq sink %s: %s", self.name, reason)
        else:
            log.warning("rabbitmq sink %s: %s; retrying in the background", self.name, reason)

    async def _connect(self) -> _Up:
        config = self.config
        connection = await aio_pika.connect(self.url, timeout=config.connect_timeout_s)
        try:
            async with asyncio.timeout(config.connect_timeout_s):
                admin = await connection.channel(publisher_confirms=False)
                slots = [
                    _Slot(await _confirm_channel(connection), config.max_inflight)
                    for _ in range(config.channels)
                ]
                up = _Up(connection, admin, slots, config.connect_timeout_s)
                await self._declare(up)
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        return up

    async def _declare(self, up: _Up) -> None:
        """Declare the configured exchange (durable) or check that it exists."""
        name, config = self.exchange, self.config
        if not name:
            return
        if config.declare and not name.startswith("amq."):
            channel = await up.connection.channel(publisher_confirms=False)
            try:
                await channel.declare_exchange(
                    name, aio_pika.ExchangeType(config.exchange_type), durable=True
                )
                up.known.add(name)
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
        if not await up.exchange_exists(name):
            log.error("rabbitmq sink %s: exchange %r does not exist", self.name, name)

    # --- publishing ---------------------------------------------------------

    async def publish_many(self, items: Sequence[Outgoing]) -> list[Delivery | SinkError]:
        state = self._state
        if not isinstance(state, _Up):
            return [state.error()] * len(items)
        results: list[Delivery | SinkError | None] = [None] * len(items)
        messages = await self._prepare(state, items, results)
        if messages:
            deadline = asyncio.get_running_loop().time() + self.config.confirm_timeout_s
            slot = state.pick()
            sent: list[tuple[_Message, Confirm]] = []
            unsent: list[_Message] = []
            try:
                await self._send(state, slot, messages, sent)
            except Exception as exc:
                unsent = messages[len(sent) :]
                if not (_channel_gone(exc) and not state.connection.is_closed):
                    failure = SinkUnavailable(f"publishing failed: {_describe(exc)}")
                    for m in unsent:
                        results[m.index] = failure
                    unsent = []
            except BaseException:  # cancelled: nobody waits for these confirms any more
                for _, confirm in sent:
                    confirm.cancel()
                raise
            closed = await self._confirmed(state, sent, results, deadline)
            if closed or unsent:
                # Written after the channel closed, or caught in a close: not refused.
                suspects = sorted([*closed, *unsent], key=lambda m: m.index)
                await self._isolate(state, suspects, results, deadline)
        return [r if r is not None else SinkUnavailable("not published") for r in results]

    async def _isolate(
        self,
        state: _Up,
        suspects: list[_Message],
        results: list[Delivery | SinkError | None],
        deadline: float,
    ) -> None:
        """Find which of ``suspects`` made the broker close a channel; deliver the others.

        Each group is republished on a private channel of its own, so only its own
        messages can close it; a group that closes its channel is split in two, a
        message that closes one alone gets the broker's error (`own_close_error`).
        With one poison message among n this costs about 2·log2(n) round trips. A
        neighbour may have reached the queue before the close without its confirm,
        and then arrives twice (at-least-once).
        """
        loop = asyncio.get_running_loop()
        groups: list[list[_Message]] = [suspects]
        while groups:
            group = groups.pop(0)
            if state.connection.is_closed or loop.time() >= deadline:
                for m in group:
                    results[m.index] = SinkUnavailable(
                        f"the channel closed while publishing to exchange {m.exchange!r}; "
                        "no new channel in time",
                        code="channel_closed",
                    )
                continue
            closed, why = await self._try_alone(state, group, results, deadline)
            if not closed:
                continue
            if len(closed) == 1 and len(group) == 1 and why is not None:
                m = closed[0]
                # Logged and counted with the call's other outcomes, by the Publisher.
                results[m.index] = own_close_error(why, m.exchange, m.routing_key)
                continue
            half = (len(closed) + 1) // 2
            groups[0:0] = [closed[:half], closed[half:]] if len(closed) > 1 else [closed]

    async def _try_alone(
        self,
        state: _Up,
        group: list[_Message],
        results: list[Delivery | SinkError | None],
        deadline: float,
    ) -> tuple[list[_Message], aiormq.exceptions.ChannelClosed | None]:
        """Publish ``group`` on a new private channel, in order; fill in each result, or
        return the messages whose publish the broker's channel close cut off (and why)."""
        loop = asyncio.get_running_loop()
        closed: list[_Message] = []
        why: aiormq.exceptions.ChannelClosed | None = None
        channel: AbstractChannel | None = None
        confirms: list[Confirm] = []
        try:
            async with asyncio.timeout(max(deadline - loop.time(), 0.001)):
                channel = await _confirm_channel(state.connection)
                raw = await channel.get_underlay_channel()
                assert isinstance(raw, aiormq.Channel)
                fast = _fast_path(raw)
                write = _write_batch if fast else _publish_each
                # Per-message tasks can still write to a channel the broker just closed,
                # which costs the whole connection: on that path, one message at a time.
                limit = self.config.max_inflight if fast else 1
                pos = 0
                while pos < len(group):
                    # One message id at a time per channel (basic.return is matched by id).
                    chunk: list[_Message] = []
                    ids: set[str] = set()
                    while (
                        pos < len(group) and len(chunk) < limit and group[pos].message_id not in ids
                    ):
                        chunk.append(group[pos])
                        ids.add(group[pos].message_id)
                        pos += 1
                    if raw.is_closed:
                        closed.extend(chunk)
                        continue
                    confirms = await write(raw, chunk, self.config.mandatory)
                    await asyncio.wait(confirms)
                    for m, confirm in zip(chunk, confirms, strict=True):
                        exc = None if confirm.cancelled() else confirm.exception()
                        if exc is not None and closed_by_broker(exc):
                            assert isinstance(exc, aiormq.exceptions.ChannelClosed)
                            closed.append(m)
                            why = exc
                        elif confirm.cancelled():
                            results[m.index] = publish_error(
                                TimeoutError(), m.exchange, m.routing_key
                            )
                        elif exc is not None:
                            results[m.index] = publish_error(exc, m.exchange, m.routing_key)
                        else:
                            results[m.index] = Delivery(
                                self.name, m.exchange, routing_key=m.routing_key
                            )
        except TimeoutError:
            for m in group:
                if results[m.index] is None and m not in closed:
                    results[m.index] = publish_error(TimeoutError(), m.exchange, m.routing_key)
        except Exception as exc:
            if not _channel_gone(exc):
                failure = SinkUnavailable(f"republishing failed: {_describe(exc)}")
                for m in group:
                    if results[m.index] is None and m not in closed:
                        results[m.index] = failure
            else:
                closed = [m for m in group if results[m.index] is None]
                if isinstance(exc, aiormq.exceptions.ChannelClosed):
                    why = exc
        finally:
            for confirm in confirms:
                if not confirm.done():  # timed out, or this call was cancelled
                    confirm.cancel()
            if channel is not None and not channel.is_closed:
                _close_later(channel)
        return closed, why

    async def _prepare(
        self, state: _Up, items: Sequence[Outgoing], results: list[Delivery | SinkError | None]
    ) -> list[_Message]:
        """The messages to send, in order; events that cannot go get their error now."""
        exchanges = [self._exchange_of(item) for item in items]
        missing = await self._missing_exchanges(state, exchanges)
        persistent = self.config.persistent
        structured = self.config.mode == "structured"
        messages: list[_Message] = []
        for i, (item, exchange) in enumerate(zip(items, exchanges, strict=True)):
            if exchange in missing:
                results[i] = missing[exchange]
                continue
            options = item.options
            assert isinstance(options, RabbitRoute)
            try:
                _shortstr(exchange, "the exchange name", "exchange")
                _shortstr(options.routing_key, "the routing key", "routing_key")
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
            messages.append(_Message(i, exchange, options.routing_key, properties, body))
        return messages

    async def _send(
        self,
        state: _Up,
        slot: _Slot,
        messages: list[_Message],
        sent: list[tuple[_Message, Confirm]],
    ) -> None:
        """Write ``messages`` in order on one channel, as many per write as its room allows."""
        channel = await slot.underlay(state.connection)
        write = _write_batch if _fast_path(channel) else _publish_each
        mandatory = self.config.mandatory
        pos, total = 0, len(messages)
        while pos < total:
            room = await slot.room()
            chunk: list[_Message] = []
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
        state: _Up,
        sent: list[tuple[_Message, Confirm]],
        results: list[Delivery | SinkError | None],
        deadline: float,
    ) -> list[_Message]:
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
        closed: list[_Message] = []
        for message, confirm in sent:
            if confirm.cancelled():
                results[message.index] = publish_error(
                    TimeoutError(), message.exchange, message.routing_key
                )
            elif (exc := confirm.exception()) is not None:
                if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
                    state.forget_exchanges()  # an exchange was deleted under us
                if closed_by_broker(exc) and not state.connection.is_closed:
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

    async def _missing_exchanges(self, state: _Up, exchanges: list[str]) -> dict[str, SinkError]:
        unknown = {e for e in exchanges if e not in state.known}
        missing: dict[str, SinkError] = {}
        for exchange in unknown:
            try:
                found = await state.exchange_exists(exchange)
            except Exception as exc:
                missing[exchange] = SinkUnavailable(
                    f"cannot check that exchange {exchange!r} exists: {_describe(exc)}"
                )
                continue
            if not found:
                missing[exchange] = _not_found(exchange)
        return missing

    # --- health -------------------------------------------------------------

    async def healthcheck(self) -> Health:
        """A passive declare of the configured exchange, bounded by ``health_timeout_s``."""
        state = self._state
        if not isinstance(state, _Up):
            return Health(ok=False, detail=state.reason)
        where = f"exchange {self.exchange!r} on {redacted(self.url)}"
        if not self.exchange:
            return Health(ok=True, detail=f"connected to {redacted(self.url)}")
        timeout = self.config.health_timeout_s
        try:
            async with asyncio.timeout(timeout):
                found = await state.exchange_exists(self.exchange, fresh=True)
        except TimeoutError:
            return Health(ok=False, detail=f"no answer from {redacted(self.url)} in {timeout:g}s")
        except Exception as exc:
            return Health(ok=False, detail=f"checking {where} failed: {_describe(exc)}")
        if not found:
            return Health(ok=False, detail=f"{where} does not exist")
        return Health(ok=True, detail=where)


def _make(config: SinkConfig) -> RabbitSink:
    assert isinstance(config, RabbitConfig)
    return RabbitSink(config)


SINK_TYPE = SinkType("rabbitmq", RabbitConfig, RabbitRoute, _make)
