"""The NATS sink's config (``type: nats``) and route options (``subject``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, ClassVar, Final, Literal

import msgspec

from bridge.errors import InvalidEvent, TemplateError
from bridge.event import Event
from bridge.sinks.base import RouteOptions, SinkConfig
from bridge.sinks.nats.connection import CONNECTION_DOCS, check_connection, server_list, supervision
from bridge.sinks.toolkit import EnvName, Seconds, Supervision, TlsFiles

#: A subject to publish to: dot-separated tokens, no wildcards, no whitespace.
_SUBJECT: Final = re.compile(r"[^.\s*>]+(\.[^.\s*>]+)*\Z")
#: Header names NATS can carry (RFC 7230 tokens: no ``:``).
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
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
        **CONNECTION_DOCS,
        "tls": "TLS files (see below); `tls: {}` is TLS with the system CA bundle.",
        "create_stream": "A stream created on every (re)connect if none of its name exists.",
        "max_inflight": "Publishes awaiting their ack per connection; more wait for room.",
        "confirm_timeout_s": "How long a publish waits for its acks; past it `confirm_timeout`.",
    }

    #: Only names of variables and files are in the config; URLs may carry ``user:pass@``.
    secret_fields: ClassVar[tuple[str, ...]] = ("servers",)

    def __post_init__(self) -> None:
        check_connection(self)

    @property
    def server_list(self) -> list[str]:
        return server_list(self.servers)

    @property
    def supervision(self) -> Supervision:
        return supervision(self)


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
