"""The Kafka sink's config (``type: kafka``) and route options (``topic``).

Kafka keeps its own ``*_ms`` names for what Kafka clients call so
(``request_timeout_ms``, ``linger_ms``); the fields it shares with the other
brokers use the toolkit's names and units (``reconnect_max_s``,
``probe_interval_s``, ``*_env``). Nothing here imports aiokafka except the
codec check, lazily.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, ClassVar, Final, Literal

import msgspec

from bridge.errors import TemplateError
from bridge.event import Event
from bridge.sinks.base import RouteOptions, SinkConfig
from bridge.sinks.toolkit import EnvName, Millis, Seconds, Supervision, TlsFiles
from bridge.sinks.toolkit.kafka_security import (
    SECURITY_DOCS,
    SaslMechanism,
    SecurityProtocol,
    check_security,
    tls_files,
)

NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
TOPIC: Final = re.compile(r"[A-Za-z0-9._-]{1,249}\Z")
#: Bound of the caches of checked topic names and key hashes (cleared when full).
CACHE_LIMIT: Final = 65_536


def valid_topic(topic: str) -> bool:
    return bool(TOPIC.match(topic)) and topic not in (".", "..")


class KafkaConfig(SinkConfig, frozen=True, kw_only=True):
    """``type: kafka``. See docs/kafka.md for every field."""

    secret_fields: ClassVar[tuple[str, ...]] = ("sasl_password_env",)

    bootstrap_servers: str | tuple[str, ...]
    client_id: str = "evbridge"
    acks: Literal["all", -1, 0, 1] = "all"
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    linger_ms: NonNegativeInt = 0
    max_batch_bytes: PositiveInt = 1_000_000
    max_message_bytes: PositiveInt = 1_048_576
    request_timeout_ms: Millis = 15_000
    health_timeout_ms: Millis = 2_000
    probe_interval_s: Seconds = 5.0
    reconnect_max_s: Seconds = 2.0
    enable_idempotence: bool = False
    auto_create_topics: bool = False
    mode: Literal["binary", "structured"] = "binary"
    # The TLS/SASL fields shared with the Kafka source (bridge.sinks.toolkit.kafka_security).
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password_env: EnvName | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    field_docs: ClassVar[Mapping[str, str]] = {
        "bootstrap_servers": "`host:port` of the brokers: comma-separated text or a list.",
        "client_id": "Sent to the brokers (their logs and quotas).",
        "acks": "`all` (or -1): the in-sync replicas have the record; `1`: the leader; "
        "`0`: nothing is awaited.",
        "compression": "Compression codec per record batch.",
        "linger_ms": "How long a partition's batch waits for more events before it is sent.",
        "max_batch_bytes": "Size at which a record batch is closed (keep at or below the "
        "broker's `message.max.bytes`).",
        "max_message_bytes": "Largest single event as a record; a larger one fails alone "
        "with `message_too_large`.",
        "request_timeout_ms": "Longest wait for an acknowledgement (or metadata, a connection "
        "attempt); past it `sink_timeout`.",
        "health_timeout_ms": "Bound on the health check's metadata request.",
        "probe_interval_s": "Seconds between background health probes while the sink is up.",
        "reconnect_max_s": "Longest pause between connection attempts and probes while the "
        "broker is away.",
        "enable_idempotence": "The idempotent producer (needs `acks: all`).",
        "auto_create_topics": "Let the broker create a missing topic on first use; with "
        "false it fails with `unknown_topic`.",
        "mode": "CloudEvents content mode: `binary` (headers) or `structured` (JSON body).",
        **SECURITY_DOCS,
    }

    def __post_init__(self) -> None:
        from bridge.sinks.kafka._aiokafka import codec_available

        if not self.servers:
            raise ValueError("bootstrap_servers: must name at least one host:port")
        if self.enable_idempotence and self.acks not in ("all", -1):
            raise ValueError(f"enable_idempotence: needs acks 'all' (acks is {self.acks!r})")
        if self.compression != "none" and not codec_available(self.compression):
            raise ValueError(
                f"compression: {self.compression!r} needs a codec library that is not "
                "installed (pip install cramjam)"
            )
        check_security(self)

    @property
    def servers(self) -> list[str]:
        raw = self.bootstrap_servers
        parts = raw.split(",") if isinstance(raw, str) else list(raw)
        return [p.strip() for p in parts if p.strip()]

    @property
    def tls(self) -> TlsFiles | None:
        """The ``ssl_*`` files as the toolkit's type, when the protocol uses TLS."""
        return tls_files(self)

    @property
    def supervision(self) -> Supervision:
        """The supervisor's knobs. aiokafka reconnects to brokers underneath a started
        producer, so failed probes mark the sink down but keep the producer."""
        return Supervision.for_broker(
            connect_timeout_s=self.request_timeout_ms / 1000,
            health_timeout_s=self.health_timeout_ms / 1000,
            probe_interval_s=self.probe_interval_s,
            reconnect_max_s=self.reconnect_max_s,
            max_failed_probes=None,
        )


class KafkaRoute(RouteOptions, frozen=True, kw_only=True):
    """``topic`` (a template, e.g. ``"events.{type}"``)."""

    topic: str

    field_docs: ClassVar[Mapping[str, str]] = {
        "topic": 'Topic to publish to; a template, e.g. `"events.{type}"`.',
    }

    #: Kafka's own topics (``__consumer_offsets``, ``__transaction_state``): never a
    #: template's choice.
    internal: ClassVar[Mapping[str, tuple[str, ...]]] = {"topic": ("__*",)}

    def destination(self, sink: str) -> str:
        return self.topic

    def check(self, event: Event | None) -> None:
        """The topic, as rendered, is a legal Kafka topic name: a 400, not a broker error."""
        topic = self.topic
        if topic in _GOOD_TOPICS:
            return
        if not valid_topic(topic):
            raise TemplateError(
                f"topic {topic[:100]!r} is not a valid Kafka topic name "
                "(1-249 characters of [A-Za-z0-9._-], not '.' or '..')",
                field="topic",
            )
        if len(_GOOD_TOPICS) >= CACHE_LIMIT:
            _GOOD_TOPICS.clear()
        _GOOD_TOPICS.add(topic)


#: Topic names already checked (bounded; cleared when full).
_GOOD_TOPICS: set[str] = set()
