"""The Kafka source's config (``type: kafka``): a consumer group on topics or a pattern.
No broker library is imported here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar, Literal

import msgspec

from bridge.sinks.toolkit import EnvName, Seconds, Supervision, TlsFiles
from bridge.sinks.toolkit.kafka_security import (
    SECURITY_DOCS,
    SaslMechanism,
    SecurityProtocol,
    check_security,
    tls_files,
)
from bridge.sources.base import SourceConfig
from bridge.sources.kafka.flow import Order


class KafkaSourceConfig(SourceConfig, frozen=True, kw_only=True):
    """``type: kafka``: a consumer group with offsets committed only when done. See
    docs/sources.md."""

    bootstrap_servers: str | tuple[str, ...]
    group_id: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    topics: tuple[str, ...] = ()
    pattern: str | None = None
    start: Literal["earliest", "latest"] = "earliest"
    max_records: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 500
    order: Order = "partition"
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 16
    fetch_wait_s: Seconds = 0.5
    event_type: str = "{topic}"
    dead_letter_topic: str | None = None
    connect_timeout_s: Seconds = 10.0
    health_timeout_s: Seconds = 2.0
    probe_interval_s: Seconds = 10.0
    reconnect_max_s: Seconds = 5.0
    # The TLS/SASL fields of the Kafka sink (bridge.sinks.toolkit.kafka_security).
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password_env: EnvName | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    secret_fields: ClassVar[tuple[str, ...]] = ("sasl_password_env",)
    placeholders: ClassVar[tuple[str, ...]] = ("topic",)
    field_docs: ClassVar[Mapping[str, str]] = {
        "bootstrap_servers": "`host:port` of the brokers: comma-separated text or a list.",
        "group_id": "The consumer group; its committed offsets are where consuming resumes.",
        "topics": "Topics to consume (or `pattern`).",
        "pattern": "A regular expression of topic names to consume (instead of `topics`).",
        "start": "Where a group without committed offsets starts: `earliest` or `latest`.",
        "max_records": "Most records held (fetched, not done); at it, fetching pauses "
        "(`pause()`) until one is done.",
        "order": "What is handled in order: a `partition`'s records, or each record `key`'s "
        "within its partition (different keys concurrently).",
        "concurrency": "Most records handled at once, over partitions (or keys).",
        "fetch_wait_s": "How long one fetch waits for records.",
        "event_type": "The `type` of a record that is not a CloudEvent: a template of `{topic}`.",
        "dead_letter_topic": "Where dead letters are produced (with the reason in an "
        "`evbridge-reason` header); unset: logged, counted and committed past.",
        "connect_timeout_s": "Bound on starting the consumer (joining the group).",
        "health_timeout_s": "Bound on a health probe (a metadata request).",
        "probe_interval_s": "Seconds between background probes.",
        "reconnect_max_s": "Longest pause between attempts to start the consumer again.",
        **SECURITY_DOCS,
    }

    def __post_init__(self) -> None:
        self.check_template(self.event_type, "event_type")
        if not self.server_list:
            raise ValueError("bootstrap_servers: must name at least one host:port")
        if bool(self.topics) == (self.pattern is not None):
            raise ValueError("topics: give either topics or pattern")
        check_security(self)

    @property
    def server_list(self) -> list[str]:
        raw = self.bootstrap_servers
        parts = raw.split(",") if isinstance(raw, str) else list(raw)
        return [p.strip() for p in parts if p.strip()]

    @property
    def tls(self) -> TlsFiles | None:
        """The ``ssl_*`` files, when the protocol uses TLS."""
        return tls_files(self)

    @property
    def supervision(self) -> Supervision:
        return Supervision.for_broker(
            connect_timeout_s=self.connect_timeout_s,
            health_timeout_s=self.health_timeout_s,
            probe_interval_s=self.probe_interval_s,
            reconnect_max_s=self.reconnect_max_s,
            max_failed_probes=None,  # aiokafka reconnects underneath; the consumer is kept
        )
