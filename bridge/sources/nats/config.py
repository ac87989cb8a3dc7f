"""The NATS source's config (``type: nats``): a JetStream durable pull consumer.
No broker library is imported here."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, ClassVar, Final

import msgspec

from bridge.sinks.nats.config import StreamName
from bridge.sinks.toolkit import EnvName, Seconds, Supervision, TlsFiles
from bridge.sources.base import SourceConfig

MAX_FAILED_PROBES: Final = 3
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
        "servers": "Server URLs (`nats://` or `tls://`): one, comma-separated text or a list.",
        "user": "User name (with `password_env`).",
        "password_env": "Name of the environment variable holding the password (with `user`).",
        "token_env": "Name of the environment variable holding an auth token.",
        "creds_file": "Path to a NATS `.creds` file (JWT and NKey seed).",
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
        "connect_timeout_s": "Bound on one connection attempt.",
        "health_timeout_s": "Bound on a health probe.",
        "probe_interval_s": "Seconds between background probes while connected.",
        "reconnect_max_s": "Longest pause between reconnection attempts.",
    }

    def __post_init__(self) -> None:
        self.check_template(self.event_type, "event_type")
        if not self.event_type:
            raise ValueError("event_type: must not be empty")
        if not self.server_list:
            raise ValueError("servers: must name at least one nats:// or tls:// URL")
        for url in self.server_list:
            if not re.match(r"(nats|tls)://", url):
                raise ValueError(f"servers: {url!r} must start with nats:// or tls://")
        if (self.user is None) != (self.password_env is None):
            raise ValueError("password_env: user and password_env go together")

    @property
    def server_list(self) -> list[str]:
        raw = self.servers
        parts = raw.split(",") if isinstance(raw, str) else list(raw)
        return [p.strip() for p in parts if p.strip()]

    @property
    def supervision(self) -> Supervision:
        return Supervision.for_broker(
            connect_timeout_s=self.connect_timeout_s,
            health_timeout_s=self.health_timeout_s,
            probe_interval_s=self.probe_interval_s,
            reconnect_max_s=self.reconnect_max_s,
            max_failed_probes=MAX_FAILED_PROBES,
        )
