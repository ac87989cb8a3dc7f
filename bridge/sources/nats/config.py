"""The NATS source's config (``type: nats``): a JetStream durable pull consumer.
No broker library is imported here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar

import msgspec

from bridge.sinks.nats.config import StreamName
from bridge.sinks.nats.connection import CONNECTION_DOCS, check_connection, server_list, supervision
from bridge.sinks.toolkit import EnvName, Seconds, Supervision, TlsFiles
from bridge.sources.base import SourceConfig

ConsumerName = Annotated[str, msgspec.Meta(pattern=r"^[^.\s*>/\\]{1,255}$")]


class NatsSourceConfig(SourceConfig, frozen=True, kw_only=True):
    """``type: nats``: a JetStream durable consumer. See docs/sources.md."""

    servers: str | tuple[str, ...] = "nats://127.0.0.1:4222"
    user: str | None = None
    password_env: EnvName | None = None
    token_env: EnvName | None = None
    creds_file: str | None = None
    tls: TlsFiles | None = None
    stream: StreamName
    durable: ConsumerName
    filter_subject: str | None = None
    batch: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 32
    ack_wait_s: Seconds = 30.0
    fetch_wait_s: Seconds = 1.0
    event_type: str = "{subject}"
    dead_letter_subject: str | None = None
    connect_timeout_s: Seconds = 5.0
    health_timeout_s: Seconds = 2.0
    probe_interval_s: Seconds = 5.0
    reconnect_max_s: Seconds = 5.0

    placeholders: ClassVar[tuple[str, ...]] = ("subject", "stream")
    secret_fields: ClassVar[tuple[str, ...]] = ("servers",)
    field_docs: ClassVar[Mapping[str, str]] = {
        **CONNECTION_DOCS,
        "tls": "TLS files; `tls: {}` is TLS with the system CA bundle.",
        "stream": "The JetStream stream to consume (it must exist).",
        "durable": "The durable consumer's name; created (explicit acks) if it does not exist.",
        "filter_subject": "Only messages of this subject (wildcards allowed); unset: all.",
        "batch": "Messages fetched at once: the events in flight.",
        "ack_wait_s": "A new consumer's ack wait: an event unacked this long is redelivered.",
        "fetch_wait_s": "How long one fetch waits for messages.",
        "event_type": "The `type` of a message that is not a CloudEvent: a template of "
        "`{subject}`, `{stream}`.",
        "dead_letter_subject": "Where dead letters are published (with the reason in "
        "`Evbridge-Reason`); unset: terminated (`term`), never redelivered.",
    }

    def __post_init__(self) -> None:
        self.check_template(self.event_type, "event_type")
        if not self.event_type:
            raise ValueError("event_type: must not be empty")
        check_connection(self)

    @property
    def server_list(self) -> list[str]:
        return server_list(self.servers)

    @property
    def supervision(self) -> Supervision:
        return supervision(self)
