"""Typed, frozen configuration: one YAML file plus ``EVBRIDGE_*`` environment overrides.

Validated once, at load. Unknown keys are rejected; every error names the
dotted key path and the bad value. With no file at all, the embedded default
(`bridge/default.yaml`) applies: one ``file`` sink and a ``"*"`` route to it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from bridge.configparse import check_name, convert
from bridge.errors import ConfigError
from bridge.routeconfig import DeadLetterConfig, RouteConfig, parse_route
from bridge.sinks.base import SinkConfig, get_sink_type
from bridge.webhookconfig import HttpHandlerConfig, check_http_handlers

__all__ = [
    "AuthConfig",
    "Config",
    "DeadLetterConfig",
    "DeliveryConfig",
    "HandlersConfig",
    "LimitsConfig",
    "ListenConfig",
    "LoggingConfig",
    "MetricsConfig",
    "RetryConfig",
    "RouteConfig",
    "ShutdownConfig",
    "default_config_text",
    "default_source",
    "load_config",
    "load_yaml",
    "parse_config",
]

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ListenConfig(_Section, frozen=True, kw_only=True):
    """API listeners; either may be null (off). ``unix_mode`` is octal text."""

    tcp: str | None = "127.0.0.1:8787"
    unix: str | None = "./evbridge.sock"
    unix_mode: Annotated[str, msgspec.Meta(pattern=r"^0?[0-7]{3}$")] = "0660"
    unix_group: str | None = None


class MetricsConfig(_Section, frozen=True, kw_only=True):
    """The separate listener for /metrics, /healthz and /readyz (null: off)."""

    tcp: str | None = "127.0.0.1:9464"


class AuthConfig(_Section, frozen=True, kw_only=True):
    """``token`` (or env ``EVBRIDGE_TOKEN``): a bearer token every API request must carry."""

    token: str | None = None


class LimitsConfig(_Section, frozen=True, kw_only=True):
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


class ShutdownConfig(_Section, frozen=True, kw_only=True):
    """``grace_s``: how long in-flight work may take to finish after SIGTERM."""

    grace_s: Annotated[float, msgspec.Meta(ge=0)] = 10.0


class HandlersConfig(_Section, frozen=True, kw_only=True):
    """Handler modules to import, default timeout, follow-up depth limit, and how
    many events of one batch may be processed concurrently.

    ``threads``: the threads that run plain ``def`` handlers (their own pool: the
    bridge's I/O never waits for it); a run waiting for a free one counts against
    its handler's timeout. ``cancel_grace_s``: how long a cancelled ``async def``
    handler may take to end; one that catches the cancellation and goes on past
    it is abandoned (see docs/guarantees.md, "Handlers").
    """

    modules: tuple[str, ...] = ()
    timeout_s: PositiveFloat = 5.0
    max_depth: PositiveInt = 8
    concurrency: PositiveInt = 64
    entry_points: bool = True
    #: Warn (naming the handler) when the event loop is blocked this long; 0 turns it off.
    loop_warn_s: Annotated[float, msgspec.Meta(ge=0)] = 0.25
    threads: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 32
    cancel_grace_s: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    #: ``module:callable`` async middleware wrapped around every handler call, in order
    #: (`bridge.middleware`).
    middleware: tuple[str, ...] = ()
    #: The application's HTTP endpoints run as handlers (`bridge.webhooks`).
    http: tuple[HttpHandlerConfig, ...] = ()


class LoggingConfig(_Section, frozen=True, kw_only=True):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class RetryConfig(_Section, frozen=True, kw_only=True):
    """Retries of spooled events after a retriable failure: exponential backoff from
    ``initial_s`` up to ``max_s``, with jitter. An event is given up on (dead-lettered)
    after ``max_attempts`` attempts or ``max_age_s`` seconds after it was accepted,
    whichever comes first; null means no limit of that kind."""

    initial_s: PositiveFloat = 0.1
    max_s: PositiveFloat = 30.0
    max_attempts: PositiveInt | None = None
    max_age_s: PositiveFloat | None = 86400.0


class DeliveryConfig(_Section, frozen=True, kw_only=True):
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


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole configuration. Build it with `load_config` or `parse_config`."""

    source: str = ""
    handlers: HandlersConfig = HandlersConfig()
    sinks: tuple[SinkConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    listen: ListenConfig = ListenConfig()
    metrics: MetricsConfig = MetricsConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    logging: LoggingConfig = LoggingConfig()
    delivery: DeliveryConfig = DeliveryConfig()

    def sink(self, name: str) -> SinkConfig:
        """The sink config called ``name``."""
        for sink in self.sinks:
            if sink.name == name:
                return sink
        raise KeyError(name)


_SECTIONS: dict[str, type[_Section]] = {
    "handlers": HandlersConfig,
    "listen": ListenConfig,
    "metrics": MetricsConfig,
    "auth": AuthConfig,
    "limits": LimitsConfig,
    "shutdown": ShutdownConfig,
    "logging": LoggingConfig,
    "delivery": DeliveryConfig,
}


def default_source() -> str:
    """``evbridge://<hostname>``: the ``source`` of events that do not set one."""
    return f"evbridge://{socket.gethostname()}"


def _parse_sink(raw: object, where: str) -> SinkConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping (got {raw!r})", field=where)
    check_name(raw.get("name"), f"{where}.name")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise ConfigError(f"{where}.type: is required (got {kind!r})", field=f"{where}.type")
    sink_type = get_sink_type(kind, where=f"{where}.type")
    parsed: SinkConfig = convert(dict(raw), sink_type.config, f".{where}")
    return parsed


def _env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """Apply ``EVBRIDGE_<SECTION>_<KEY>`` and ``EVBRIDGE_TOKEN`` / ``EVBRIDGE_SOURCE``."""
    if env.get("EVBRIDGE_TOKEN"):
        raw.setdefault("auth", {})
        if not isinstance(raw["auth"], dict):
            raise ConfigError("auth: must be a mapping", field="auth")
        raw["auth"]["token"] = env["EVBRIDGE_TOKEN"]
    if env.get("EVBRIDGE_SOURCE"):
        raw["source"] = env["EVBRIDGE_SOURCE"]
    for var, text in env.items():
        if not var.startswith("EVBRIDGE_"):
            continue
        section, _, key = var[len("EVBRIDGE_") :].lower().partition("_")
        if section not in _SECTIONS or not key:
            continue
        if key not in _SECTIONS[section].__struct_fields__:
            raise ConfigError(f"{var}: {section} has no key {key!r}", field=var)
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{section}: must be a mapping", field=section)
        try:
            target[key] = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            target[key] = text


def parse_config(raw: Mapping[str, Any] | None, env: Mapping[str, str] | None = None) -> Config:
    """Validate a decoded config mapping (plus env overrides) into a `Config`."""
    data: dict[str, Any] = dict(raw or {})
    _env_overrides(data, os.environ if env is None else env)
    raw_sinks = data.pop("sinks", None) or []
    raw_routes = data.pop("routes", None) or []
    if not isinstance(raw_sinks, list):
        raise ConfigError(f"sinks: must be a list (got {raw_sinks!r})", field="sinks")
    if not isinstance(raw_routes, list):
        raise ConfigError(f"routes: must be a list (got {raw_routes!r})", field="routes")
    config: Config = convert(data, Config, "")
    limits = config.limits
    if limits.max_inflight_bytes < limits.max_body_bytes:
        # A body the in-flight bound could never admit would be refused forever.
        raise ConfigError(
            f"limits.max_inflight_bytes: must be at least limits.max_body_bytes "
            f"({limits.max_body_bytes}) (got {limits.max_inflight_bytes})",
            field="limits.max_inflight_bytes",
        )
    if limits.unix_reserved_connections >= limits.max_connections:
        raise ConfigError(
            f"limits.unix_reserved_connections: must be below limits.max_connections "
            f"({limits.max_connections}), got {limits.unix_reserved_connections}",
            field="limits.unix_reserved_connections",
        )
    check_http_handlers(config.handlers.http, "handlers.http")
    sinks: dict[str, SinkConfig] = {}
    for i, raw_sink in enumerate(raw_sinks):
        sink = _parse_sink(raw_sink, f"sinks[{i}]")
        if sink.name in sinks:
            raise ConfigError(
                f"sinks[{i}].name: {sink.name!r} is used twice", field=f"sinks[{i}].name"
            )
        sinks[sink.name] = sink
    routes = tuple(parse_route(r, f"routes[{i}]", sinks, i) for i, r in enumerate(raw_routes))
    seen: set[str] = set()
    for i, route in enumerate(routes):
        if route.name in seen:
            raise ConfigError(
                f"routes[{i}].name: {route.name!r} is used twice", field=f"routes[{i}].name"
            )
        seen.add(route.name)
    return msgspec.structs.replace(
        config,
        source=config.source or default_source(),
        sinks=tuple(sinks.values()),
        routes=routes,
    )


def load_yaml(text: str, where: str) -> dict[str, Any]:
    """Parse YAML text that must hold a mapping at the top."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping (got {type(raw).__name__})")
    return raw


def default_config_text() -> str:
    """The embedded default config (what runs with no config file)."""
    return resources.files("bridge").joinpath("default.yaml").read_text()


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Load ``path`` (or ``$EVBRIDGE_CONFIG``, or the embedded default) into a `Config`."""
    env = os.environ if env is None else env
    chosen = path if path is not None else env.get("EVBRIDGE_CONFIG") or None
    if chosen is None:
        return parse_config(load_yaml(default_config_text(), "default config"), env)
    try:
        text = Path(chosen).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(chosen)!r}: {exc.strerror}") from None
    return parse_config(load_yaml(text, str(chosen)), env)
