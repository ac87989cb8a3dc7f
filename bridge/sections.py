"""The sections of the configuration (`bridge.config.Config`'s fields but sinks and routes).

Each is a frozen msgspec Struct that refuses unknown keys, with a `field_docs`
table (one line of meaning per key) that docs/configuration.md is generated
from (`bridge.configdoc`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar, Literal

import msgspec

from bridge.dedupe import DedupeConfig
from bridge.webhookconfig import HttpHandlerConfig

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]


class Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A config section: frozen, unknown keys refused, one line of meaning per key."""

    #: One line of meaning per key: docs/configuration.md is generated from these
    #: (`bridge.configdoc`), which refuses a key without one.
    field_docs: ClassVar[Mapping[str, str]] = {}


class ListenConfig(Section, frozen=True, kw_only=True):
    """API listeners; either may be null (off). ``unix_mode`` is octal text."""

    tcp: str | None = "127.0.0.1:8787"
    unix: str | None = "./evbridge.sock"
    unix_mode: Annotated[str, msgspec.Meta(pattern=r"^0?[0-7]{3}$")] = "0660"
    unix_group: str | None = None

    field_docs: ClassVar[Mapping[str, str]] = {
        "tcp": "`host:port` of the TCP API listener (loopback by default); null turns it off.",
        "unix": "Path of the Unix-socket API listener; null turns it off.",
        "unix_mode": "Permissions of the socket file, as octal text.",
        "unix_group": "Group (name) given the socket file; null keeps the process's group.",
    }


class MetricsConfig(Section, frozen=True, kw_only=True):
    """The separate listener for /metrics, /healthz and /readyz (null: off)."""

    tcp: str | None = "127.0.0.1:9464"

    field_docs: ClassVar[Mapping[str, str]] = {
        "tcp": "`host:port` of the listener for /metrics, /healthz and /readyz; null turns it off.",
    }


class AuthConfig(Section, frozen=True, kw_only=True):
    """``token`` (or env ``EVBRIDGE_TOKEN``): a bearer token every API request must carry."""

    token: str | None = None

    field_docs: ClassVar[Mapping[str, str]] = {
        "token": "Bearer token every API request must carry (or env `EVBRIDGE_TOKEN`); "
        "null: none needed.",
    }


class IngestConfig(Section, frozen=True, kw_only=True):
    """How ``POST /v1/events`` and ``/v1/events/batch`` treat what they are sent:
    ``dedupe`` (null: off) answers a retried POST of an event (or batch item) already
    handled with the first result (`bridge.dedupe`)."""

    dedupe: DedupeConfig | None = None

    field_docs: ClassVar[Mapping[str, str]] = {
        "dedupe": "A window of handled (`source`, `id`) pairs: a `POST /v1/events` of one "
        "of them, or a `/v1/events/batch` item (also one repeating an earlier item of its "
        "batch), is not handled again but answered with the first result, flagged "
        "`duplicate: true`; null: off.",
    }


class LimitsConfig(Section, frozen=True, kw_only=True):
    """Bounds on what one client can make the bridge hold (docs/guarantees.md).

    ``max_body_bytes``: 413 above it (checked against Content-Length before
    reading, and while reading a chunked body). ``max_batch``: 413 for more
    items in one batch. ``max_inflight``: 429 while this many events are being
    processed. ``max_connections``: open connections on the TCP and Unix
    listeners together (the metrics listener has a budget of its own); beyond
    it a new connection gets 503 and is closed. ``header_timeout_s``: from a
    request's first byte to the end of its headers; ``body_timeout_s``: from
    there to the end of its body; over either, 408 and the connection closes.
    ``keepalive_timeout_s``: an idle keep-alive connection is closed after it
    (keep it above your HTTP client's pool idle timeout).

    Memory, in bytes (docs/guarantees.md, "Memory"): ``max_inflight_bytes``,
    request bodies being processed, all listeners together (429 beyond; each
    request reserves its ``Content-Length``, or ``max_body_bytes`` for a chunked
    body, before it is read; at least ``max_body_bytes``).
    ``max_subscriber_bytes``: one subscriber's queue (its default, and the most
    ``?max_queue_bytes=`` may ask for); ``max_total_subscriber_bytes``: all
    subscribers' queues together. Beyond either, the overflow policy applies.
    ``first_request_timeout_s``: from accepting a connection to the end of its
    first request's headers (a connection that never sends is closed after it).
    ``unix_reserved_connections``: slots of ``max_connections`` only the Unix
    socket may take, so TCP clients cannot lock the local app out.
    ``max_nesting_depth``: arrays/objects nested deeper than this in an event
    are refused with 400 (decoders recurse; this keeps them far from the limit).
    """

    max_body_bytes: PositiveInt = 1024 * 1024
    max_batch: PositiveInt = 10_000
    max_inflight: PositiveInt = 10_000
    max_inflight_bytes: PositiveInt = 64 * 1024 * 1024
    max_connections: PositiveInt = 1024
    max_subscribers: PositiveInt = 64
    max_subscriber_bytes: PositiveInt = 16 * 1024 * 1024
    max_total_subscriber_bytes: PositiveInt = 64 * 1024 * 1024
    header_timeout_s: PositiveFloat = 10.0
    body_timeout_s: PositiveFloat = 30.0
    keepalive_timeout_s: PositiveFloat = 300.0
    first_request_timeout_s: PositiveFloat = 5.0
    unix_reserved_connections: Annotated[int, msgspec.Meta(ge=0)] = 32
    max_nesting_depth: Annotated[int, msgspec.Meta(ge=1, le=256)] = 64

    field_docs: ClassVar[Mapping[str, str]] = {
        "max_body_bytes": "Largest request body; above it 413 `body_too_large`.",
        "max_batch": "Most events in one batch request; above it 413 `batch_too_large`.",
        "max_inflight": "Events being processed at once; beyond it 429 `overloaded`.",
        "max_inflight_bytes": "Request bodies being processed, all listeners together; "
        "beyond it 429 (at least `max_body_bytes`).",
        "max_connections": "Open connections on the TCP and Unix listeners together; "
        "beyond it 503 and the connection closes.",
        "max_subscribers": "Open `/v1/subscribe` streams; beyond it 429 `too_many_subscribers`.",
        "max_subscriber_bytes": "One subscriber's queue (and the most `?max_queue_bytes=` "
        "may ask for).",
        "max_total_subscriber_bytes": "All subscribers' queues together.",
        "header_timeout_s": "From a request's first byte to the end of its headers; "
        "over it 408 and the connection closes.",
        "body_timeout_s": "From the end of the headers to the end of the body; "
        "over it 408 and the connection closes.",
        "keepalive_timeout_s": "An idle keep-alive connection is closed after it "
        "(keep it above your client's pool idle timeout).",
        "first_request_timeout_s": "From accepting a connection to the end of its "
        "first request's headers.",
        "unix_reserved_connections": "Slots of `max_connections` only the Unix socket may "
        "take (below `max_connections`).",
        "max_nesting_depth": "Arrays/objects nested deeper than this in an event are "
        "refused with 400.",
    }


class ShutdownConfig(Section, frozen=True, kw_only=True):
    """``grace_s``: how long in-flight work may take to finish after SIGTERM."""

    grace_s: Annotated[float, msgspec.Meta(ge=0)] = 10.0

    field_docs: ClassVar[Mapping[str, str]] = {
        "grace_s": "How long in-flight work may take to finish after SIGTERM.",
    }


class HandlersConfig(Section, frozen=True, kw_only=True):
    """Handler modules to import, default timeout, follow-up depth limit, and how
    many events of one batch may be processed concurrently.

    ``threads``: the threads that run plain ``def`` handlers (their own pool: the
    bridge's I/O never waits for it); a run waiting for a free one counts against
    its handler's timeout. ``cancel_grace_s``: how long a cancelled ``async def``
    handler may take to end; one that catches the cancellation and goes on past
    it is abandoned (see docs/guarantees.md, "Handlers").

    ``path``: directories added to the end of ``sys.path`` before ``modules``
    are imported. `load_config` resolves a relative one against the config
    file's directory and puts that directory first, so a module next to the
    config imports with no setting at all; after loading, every entry is absolute.
    """

    modules: tuple[str, ...] = ()
    path: tuple[str, ...] = ()
    #: ``module:callable`` async middleware wrapped around every handler call, in order
    #: (`bridge.middleware`).
    middleware: tuple[str, ...] = ()
    timeout_s: PositiveFloat = 5.0
    max_depth: PositiveInt = 8
    concurrency: PositiveInt = 64
    entry_points: bool = True
    #: Warn (naming the handler) when the event loop is blocked this long; 0 turns it off.
    loop_warn_s: Annotated[float, msgspec.Meta(ge=0)] = 0.25
    threads: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 32
    cancel_grace_s: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    #: The application's HTTP endpoints run as handlers (`bridge.webhooks`).
    http: tuple[HttpHandlerConfig, ...] = ()

    field_docs: ClassVar[Mapping[str, str]] = {
        "modules": "Python modules to import for their `@on` handlers, in this order.",
        "path": "Directories appended to `sys.path` before the modules are imported; relative "
        "ones are relative to the config file's directory, which is always first.",
        "middleware": "`module:callable` async middleware wrapped around every handler "
        "call, the first outermost.",
        "timeout_s": "Default time limit of one handler run; past it the run's outcome "
        "is `timeout`.",
        "max_depth": "How deep follow-up events may nest before one is refused with `max_depth`.",
        "concurrency": "Events of one batch processed at once (the handlers of one "
        "event never run concurrently).",
        "entry_points": "Also load the handlers registered in the `evbridge.handlers` "
        "entry-point group.",
        "loop_warn_s": "Warn (naming the handler) when the event loop is blocked this "
        "long; 0 turns it off.",
        "threads": "Threads that run plain `def` handlers; waiting for one counts "
        "against the handler's timeout.",
        "cancel_grace_s": "How long a cancelled `async def` handler may take to end "
        "before it is abandoned.",
        "http": "The application's HTTP endpoints run as handlers in the chain "
        "(`handlers.http[]`, below).",
    }


class LoggingConfig(Section, frozen=True, kw_only=True):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"

    field_docs: ClassVar[Mapping[str, str]] = {
        "format": "`text` (one sentence per line) or `json` (one object per line).",
        "level": "The lowest level logged.",
    }


class RetryConfig(Section, frozen=True, kw_only=True):
    """Retries of spooled events after a retriable failure: exponential backoff from
    ``initial_s`` up to ``max_s``, with jitter. An event is given up on (dead-lettered)
    after ``max_attempts`` attempts or ``max_age_s`` seconds after it was accepted,
    whichever comes first; null means no limit of that kind."""

    initial_s: PositiveFloat = 0.1
    max_s: PositiveFloat = 30.0
    max_attempts: PositiveInt | None = None
    max_age_s: PositiveFloat | None = 86400.0

    field_docs: ClassVar[Mapping[str, str]] = {
        "initial_s": "First pause before retrying a spooled event.",
        "max_s": "Longest pause between retries (the pause doubles, with jitter).",
        "max_attempts": "Attempts after which an event is dead-lettered; null: no limit.",
        "max_age_s": "Seconds after acceptance after which an event is dead-lettered; "
        "null: no limit.",
    }


class DeliveryConfig(Section, frozen=True, kw_only=True):
    """``mode``: ``sync`` answers after the broker confirmed; ``durable`` answers after
    the event is fsync'd to the spool in ``spool_dir`` and delivers in the background.
    ``allow_override`` lets a request choose with ``Prefer: respond-async`` / ``wait=N``.

    Memory, in bytes: ``window_bytes``, the spooled events one sink's deliverer
    holds in memory (read ahead, in flight, waiting for a retry); ``tail_bytes``,
    the newest spooled records kept in memory so that a caught-up deliverer need
    not read them back from disk. Both are charged three times the records'
    size on disk (the record plus the event objects decoded from it)."""

    mode: Literal["sync", "durable"] = "sync"
    spool_dir: str = "./evbridge-spool"
    max_spool_bytes: PositiveInt = 1024 * 1024 * 1024
    window_bytes: PositiveInt = 16 * 1024 * 1024
    tail_bytes: PositiveInt = 8 * 1024 * 1024
    allow_override: bool = True
    retry: RetryConfig = RetryConfig()

    field_docs: ClassVar[Mapping[str, str]] = {
        "mode": "`sync` answers after the broker confirmed; `durable` after the event is "
        "fsync'd to the spool.",
        "spool_dir": "Directory of the durable spool.",
        "max_spool_bytes": "Spool size at which new durable events are refused with `spool_full`.",
        "window_bytes": "Spooled events one sink's deliverer holds in memory.",
        "tail_bytes": "Newest spooled records kept in memory for a caught-up deliverer.",
        "allow_override": "Let a request choose the mode with `Prefer: respond-async` or `wait=N`.",
        "retry": "Retries of spooled events after a retriable failure (see `delivery.retry`).",
    }


class TracingConfig(Section, frozen=True, kw_only=True):
    """OpenTelemetry traces (`bridge.tracing`, extra ``evbridge[otel]``), exported over
    OTLP/HTTP. Off unless ``enabled`` or an ``OTEL_*`` variable asks for it (see
    docs/observability.md). ``endpoint``: the collector's base URL (``/v1/traces`` is
    added), else ``OTEL_EXPORTER_OTLP_ENDPOINT``; ``service_name``, else
    ``OTEL_SERVICE_NAME``, else ``evbridge``; ``sampler_ratio``: the share of new
    traces sampled (a sampled parent is always followed)."""

    enabled: bool = False
    service_name: str | None = None
    endpoint: str | None = None
    sampler_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0

    field_docs: ClassVar[Mapping[str, str]] = {
        "enabled": "Export traces (also on when an `OTEL_*` variable asks for it).",
        "service_name": "The traces' `service.name`; null: `OTEL_SERVICE_NAME`, else `evbridge`.",
        "endpoint": "The collector's base URL (`/v1/traces` is added); "
        "null: `OTEL_EXPORTER_OTLP_ENDPOINT`.",
        "sampler_ratio": "Share of new traces sampled (0 to 1); a sampled parent is always "
        "followed.",
    }
