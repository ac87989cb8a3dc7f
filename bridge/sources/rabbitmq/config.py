"""The RabbitMQ source's config (``type: rabbitmq``): a queue to consume, with the
toolkit's shared field types. No broker library is imported here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar

import msgspec

from bridge.sinks.rabbitmq.connection import CONNECTION_DOCS, supervision
from bridge.sinks.toolkit import EnvName, Seconds, Supervision
from bridge.sources.base import SourceConfig

QueueName = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


class Binding(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """An exchange the queue is bound to (at every connect), with its routing keys."""

    exchange: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    routing_keys: tuple[str, ...] = ("#",)

    field_docs: ClassVar[Mapping[str, str]] = {
        "exchange": "The exchange (it must exist; the sink of the same broker declares it).",
        "routing_keys": "Binding keys (topic patterns for a topic exchange).",
    }


class RabbitSourceConfig(SourceConfig, frozen=True, kw_only=True):
    """``type: rabbitmq``: consume one queue. See docs/sources.md."""

    url: Annotated[str, msgspec.Meta(pattern=r"^amqps?://")] = "amqp://guest:guest@localhost:5672/"
    password_env: EnvName | None = None
    queue: QueueName
    declare: bool = True
    bindings: tuple[Binding, ...] = ()
    prefetch: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 32
    event_type: str = "{routing_key}"
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    connect_timeout_s: Seconds = 5.0
    health_timeout_s: Seconds = 2.0
    probe_interval_s: Seconds = 5.0
    heartbeat_s: Annotated[int, msgspec.Meta(ge=0, le=3600)] = 15
    reconnect_max_s: Seconds = 5.0

    placeholders: ClassVar[tuple[str, ...]] = ("routing_key", "queue", "exchange")
    secret_fields: ClassVar[tuple[str, ...]] = ("url",)
    field_docs: ClassVar[Mapping[str, str]] = {
        "url": "Broker URL, `amqp://` or `amqps://` (credentials in it are masked).",
        "password_env": CONNECTION_DOCS["password_env"],
        "queue": "The queue to consume.",
        "declare": "Declare `queue` (durable) and its bindings on every (re)connect; false: "
        "it must exist.",
        "bindings": "Exchanges to bind `queue` to, each with its routing keys.",
        "prefetch": "Unacknowledged messages the broker hands out at once (events in flight).",
        "event_type": "The `type` of a message that is not a CloudEvent: a template of "
        "`{routing_key}` (the queue name when empty), `{queue}`, `{exchange}`.",
        "dead_letter_exchange": "Where dead letters are published (with the reason in "
        "`x-evbridge-reason`); unset: rejected without requeue (the queue's own DLX, if any).",
        "dead_letter_routing_key": "Routing key of dead letters (default: the message's own).",
        "connect_timeout_s": "Bound on one connection attempt.",
        "health_timeout_s": "Bound on a health probe.",
        "probe_interval_s": CONNECTION_DOCS["probe_interval_s"],
        "heartbeat_s": "AMQP heartbeat interval (0: off).",
        "reconnect_max_s": CONNECTION_DOCS["reconnect_max_s"],
    }

    def __post_init__(self) -> None:
        self.check_template(self.event_type, "event_type")
        if not self.event_type:
            raise ValueError("event_type: must not be empty")

    @property
    def supervision(self) -> Supervision:
        return supervision(self)
