"""The NATS sink's config (``type: nats``) and route options (``subject``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, ClassVar, Final, Literal

import msgspec

from bridge.errors import InvalidEvent, TemplateError
from bridge.event import Event
from bridge.sinks.base import RouteOptions, SinkConfig
from bridge.sinks.toolkit import EnvName, Seconds, Supervision, TlsFiles

#: A subject to publish to: dot-separated tokens, no wildcards, no whitespace.
_SUBJECT: Final = re.compile(r"[^.\s*>]+(\.[^.\s*>]+)*\Z")
#: Header names NATS can carry (RFC 7230 tokens: no ``:``).
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
#: Probes in a row that may fail before the connection is replaced (see `Supervision`).
MAX_FAILED_PROBES: Final = 3
StreamName = Annotated[str, msgspec.Meta(pattern=r"^[^.\s*>/\\]{1,255}$")]


class StreamSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A stream the sink creates at connect if it does not exist (``create_stream``)."""

    name: StreamName
    subjects: Annotated[tuple[str, ...], msgspec.Meta(min_length=1)]
    storage: Literal["file", "memory"] = "file"
    #: JetStream drops a message whose ``Nats-Msg-Id`` it saw this recently.
    duplicate_window_s: Seconds = 120.0

    field_docs: ClassVar[Mapping[str, str]] = {
        "name": "The stream's name.",
        "subjects": "Subjects the stream stores (wildcards allowed).",
        "storage": "Where the server keeps the stream: `file` or `memory`.",
        "duplicate_window_s": "JetStream drops a message whose `Nats-Msg-Id` it saw this recently.",
    }


class NatsConfig(SinkConfig, frozen=True, kw_only=True):
    """``type: nats``. See docs/nats.md for every field."""

    servers: str | tuple[str, ...] = "nats://127.0.0.1:4222"
    user: str | None = None
    password_env: EnvName | None = None
    token_env: EnvName | None = None
    creds_file: str | None = None
    tls: TlsFiles | None = None
    create_stream: StreamSpec | None = None
    max_inflight: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 1000
    connect_timeout_s: Seconds = 5.0
    confirm_timeout_s: Seconds = 15.0
    health_timeout_s: Seconds = 2.0
    probe_interval_s: Seconds = 5.0
    reconnect_max_s: Seconds = 5.0

    field_docs: ClassVar[Mapping[str, str]] = {
        "servers": "Server URLs (`nats://` or `tls://`): one, comma-separated text or a list.",
        "user": "User name (with `password_env`).",
        "password_env": "Name of the environment variable holding the password (with `user`).",
        "token_env": "Name of the environment variable holding an auth token.",
        "creds_file": "Path to a NATS `.creds` file (JWT and NKey seed).",
        "tls": "TLS files (see below); `tls: {}` is TLS with the system CA bundle.",
        "create_stream": "A stream created on every (re)connect if none of its name exists.",
        "max_inflight": "Publishes awaiting their ack per connection; more wait for room.",
        "connect_timeout_s": "Bound on one connection attempt.",
        "confirm_timeout_s": "How long a publish waits for its acks; past it `confirm_timeout`.",
        "health_timeout_s": "Bound on a health probe.",
        "probe_interval_s": "Seconds between background probes while connected.",
        "reconnect_max_s": "Longest pause between reconnection attempts.",
    }

    #: Only names of variables and files are in the config; URLs may carry ``user:pass@``.
    secret_fields: ClassVar[tuple[str, ...]] = ("servers",)

    def __post_init__(self) -> None:
        if not self.server_list:
            raise ValueError("servers: must name at least one nats:// or tls:// URL")
        for url in self.server_list:
            if not re.match(r"(nats|tls)://", url):
                raise ValueError(f"servers: {url!r} must start with nats:// or tls://")
        if (self.user is None) != (self.password_env is None):
            raise ValueError("password_env: user and password_env go together")
        given = [k for k in ("password_env", "token_env", "creds_file") if getattr(self, k)]
        if len(given) > 1:
            raise ValueError(f"{given[1]}: set only one of password_env, token_env, creds_file")

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


class NatsRoute(RouteOptions, frozen=True, kw_only=True):
    """``subject`` (a template, e.g. ``"events.{type}"``): where JetStream stores the event."""

    subject: str

    field_docs: ClassVar[Mapping[str, str]] = {
        "subject": 'Subject to publish to; a template, e.g. `"events.{type}"`.',
    }

    #: The server's own subjects (JetStream API, system account, reply inboxes): a
    #: template rendered from client data never reaches them.
    internal: ClassVar[Mapping[str, tuple[str, ...]]] = {"subject": ("$*", "_INBOX.*", "_inbox.*")}

    def destination(self, sink: str) -> str:
        return self.subject

    def check(self, event: Event | None) -> None:
        """The subject is publishable (no wildcards, whitespace or empty tokens) and the
        event's header names fit NATS headers (no ``:``): a 400, not a publish error."""
        if not _SUBJECT.match(self.subject):
            raise TemplateError(
                f"subject {self.subject[:80]!r} is not a NATS subject to publish to "
                "(dot-separated tokens without '*', '>' or whitespace)",
                field="subject",
            )
        if event is not None:
            for name in event.headers:
                if not _HEADER_NAME.match(name):
                    raise InvalidEvent(
                        f"header name {name!r} cannot travel as a NATS header "
                        "(letters, digits and !#$%&'*+-.^_`|~ only)",
                        field=f"headers.{name[:64]}",
                    )
