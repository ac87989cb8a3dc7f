"""The RabbitMQ sink's config (``type: rabbitmq``) and route options (``exchange``,
``routing_key``), with the toolkit's shared field types."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar, Final, Literal

import msgspec

from bridge.errors import InvalidEvent, TemplateError
from bridge.event import Event
from bridge.sinks.base import RouteOptions, SinkConfig
from bridge.sinks.rabbitmq.connection import CONNECTION_DOCS, supervision
from bridge.sinks.toolkit import EnvName, Seconds, Supervision

ExchangeName = Annotated[str, msgspec.Meta(max_length=255)]

#: AMQP short strings (routing key, exchange, most properties) hold at most 255 bytes.
SHORTSTR_MAX: Final = 255
#: The largest per-message TTL (``expiration``) RabbitMQ accepts: ten years in ms. Above it
#: the broker closes the channel with ``PRECONDITION_FAILED invalid expiration``.
MAX_EXPIRATION_MS: Final = 315_360_000_000


class RabbitConfig(SinkConfig, frozen=True, kw_only=True):
    """``type: rabbitmq``. See docs/rabbitmq.md for every field."""

    url: Annotated[str, msgspec.Meta(pattern=r"^amqps?://")] = "amqp://guest:guest@localhost:5672/"
    password_env: EnvName | None = None
    exchange: ExchangeName = "evbridge"
    exchange_type: Literal["topic", "direct", "fanout", "headers"] = "topic"
    declare: bool = True
    persistent: bool = True
    mode: Literal["binary", "structured"] = "binary"
    mandatory: bool = True
    max_inflight: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 1000
    channels: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4
    connect_timeout_s: Seconds = 5.0
    confirm_timeout_s: Seconds = 15.0
    health_timeout_s: Seconds = 2.0
    probe_interval_s: Seconds = 5.0
    heartbeat_s: Annotated[int, msgspec.Meta(ge=0, le=3600)] = 15
    reconnect_max_s: Seconds = 5.0

    field_docs: ClassVar[Mapping[str, str]] = {
        "url": "Broker URL, `amqp://` or `amqps://` (credentials in it are masked wherever "
        "it is shown).",
        "password_env": CONNECTION_DOCS["password_env"],
        "exchange": 'The exchange events go to unless a route names another (`""`: the '
        "default exchange).",
        "exchange_type": "The type `exchange` is declared with.",
        "declare": "Declare `exchange` (durable) on every (re)connect; with false it is "
        "only checked.",
        "persistent": "Delivery mode 2 (persistent) rather than 1.",
        "mode": "CloudEvents content mode: `binary` (properties, headers) or `structured` "
        "(JSON body).",
        "mandatory": "Have the broker return messages no queue is bound for: they fail "
        "with `unroutable`.",
        "max_inflight": "Unconfirmed publishes per channel; more wait for room.",
        "channels": "Publishing channels on the one connection.",
        "connect_timeout_s": "Bound on one connection attempt (TCP, AMQP handshake, "
        "channels, declare).",
        "confirm_timeout_s": "How long a publish waits for its confirms; past it "
        "`confirm_timeout`.",
        "health_timeout_s": "Bound on the health check and on each background probe.",
        "probe_interval_s": CONNECTION_DOCS["probe_interval_s"],
        "heartbeat_s": "AMQP heartbeat; 0 turns it off.",
        "reconnect_max_s": CONNECTION_DOCS["reconnect_max_s"],
    }

    #: The URL may carry ``user:password@``; prefer ``password_env``.
    secret_fields: ClassVar[tuple[str, ...]] = ("url",)

    @property
    def supervision(self) -> Supervision:
        return supervision(self)


class RabbitRoute(RouteOptions, frozen=True, kw_only=True):
    """``exchange`` overrides the sink's exchange; ``routing_key`` is a template."""

    exchange: ExchangeName | None = None
    routing_key: str = "{type}"

    field_docs: ClassVar[Mapping[str, str]] = {
        "exchange": "Exchange to publish to instead of the sink's; a template.",
        "routing_key": "Routing key; a template, at most 255 bytes once rendered.",
    }

    #: The broker's own exchanges: a template never renders into one.
    internal: ClassVar[Mapping[str, tuple[str, ...]]] = {"exchange": ("amq.*",)}

    def destination(self, sink: str) -> str:
        return self.exchange if self.exchange is not None else sink

    def check(self, event: Event | None) -> None:
        """Routing key and exchange fit an AMQP short string (255 bytes); so do the
        event attributes sent as AMQP properties, and ``ttl_ms`` fits RabbitMQ's
        expiration limit (`MAX_EXPIRATION_MS`). A 400 instead of a publish error."""
        for field, value in (("routing_key", self.routing_key), ("exchange", self.exchange)):
            if value is not None and too_long(value):
                raise TemplateError(
                    f"{field} {value[:60]!r}... is {len(value.encode())} bytes as rendered; "
                    f"AMQP allows {SHORTSTR_MAX}",
                    field=field,
                )
        if event is None:
            return
        if event.ttl_ms is not None and event.ttl_ms > MAX_EXPIRATION_MS:
            raise InvalidEvent(ttl_problem(event.ttl_ms), field="ttl_ms")
        for field, value in (
            ("type", event.type),
            ("id", event.id),
            ("source", event.source),
            ("correlation_id", event.correlation_id),
            ("datacontenttype", event.datacontenttype),
        ):
            if value is not None and too_long(value):
                raise InvalidEvent(
                    f"{field} is {len(value.encode())} bytes; RabbitMQ routes carry it in an "
                    f"AMQP property of at most {SHORTSTR_MAX} bytes",
                    field=field,
                )


def too_long(value: str) -> bool:
    """Whether ``value`` does not fit an AMQP short string (cheap for short values)."""
    return len(value) > SHORTSTR_MAX // 4 and len(value.encode()) > SHORTSTR_MAX


def ttl_problem(ttl_ms: int) -> str:
    return (
        f"ttl_ms is {ttl_ms}; RabbitMQ takes a message expiration of at most "
        f"{MAX_EXPIRATION_MS} ms (ten years)"
    )
