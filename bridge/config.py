"""Typed, frozen configuration: one YAML file plus ``EVBRIDGE_*`` environment overrides.

Validated once, at load. Unknown keys are rejected; every error names the
dotted key path and the bad value. With no file at all, the embedded default
(`bridge/default.yaml`) applies: one ``file`` sink and a ``"*"`` route to it.
"""

from __future__ import annotations

import difflib
import os
import socket
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Final

import msgspec
import yaml

from bridge.configparse import convert
from bridge.errors import ConfigError
from bridge.routeconfig import DeadLetterConfig, RouteConfig, parse_route
from bridge.sections import (
    AuthConfig,
    DeliveryConfig,
    HandlersConfig,
    IngestConfig,
    LimitsConfig,
    ListenConfig,
    LoggingConfig,
    MetricsConfig,
    RetryConfig,
    Section,
    ShutdownConfig,
    TracingConfig,
)
from bridge.sinks.base import SINKS, SinkConfig
from bridge.sources.base import SourceConfig, parse_sources
from bridge.webhookconfig import check_http_handlers

__all__ = [
    "AuthConfig",
    "Config",
    "DeadLetterConfig",
    "DeliveryConfig",
    "HandlersConfig",
    "IngestConfig",
    "LimitsConfig",
    "ListenConfig",
    "LoggingConfig",
    "MetricsConfig",
    "RetryConfig",
    "RouteConfig",
    "ShutdownConfig",
    "TracingConfig",
    "config_path",
    "default_config_text",
    "default_source",
    "load_config",
    "load_yaml",
    "parse_config",
]


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole configuration. Build it with `load_config` or `parse_config`."""

    source: str = ""
    handlers: HandlersConfig = HandlersConfig()
    sinks: tuple[SinkConfig, ...] = ()
    sources: tuple[SourceConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    listen: ListenConfig = ListenConfig()
    metrics: MetricsConfig = MetricsConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    ingest: IngestConfig = IngestConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    logging: LoggingConfig = LoggingConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    tracing: TracingConfig = TracingConfig()

    field_docs: ClassVar[Mapping[str, str]] = {
        "source": "The CloudEvents `source` of events that set none (or env `EVBRIDGE_SOURCE`).",
        "handlers": "Handler modules and how handlers run.",
        "sinks": "The brokers and files events are delivered to; each has a `name` and a `type`.",
        "sources": "Brokers events are consumed from, through the handlers (docs/sources.md).",
        "routes": "Ordered rules, first match wins: event type pattern to sink and destination.",
        "listen": "The API listeners.",
        "metrics": "The metrics and probes listener.",
        "auth": "API authentication.",
        "limits": "Bounds on what clients can make the bridge hold.",
        "ingest": "How the HTTP ingest treats retried events (deduplication).",
        "shutdown": "Graceful shutdown.",
        "logging": "Log format and level.",
        "delivery": "Sync or durable delivery, the spool and retries.",
        "tracing": "OpenTelemetry traces exported over OTLP/HTTP (see docs/observability.md).",
    }

    def sink(self, name: str) -> SinkConfig:
        """The sink config called ``name``."""
        for sink in self.sinks:
            if sink.name == name:
                return sink
        raise KeyError(name)


_SECTIONS: dict[str, type[Section]] = {
    "handlers": HandlersConfig,
    "listen": ListenConfig,
    "metrics": MetricsConfig,
    "auth": AuthConfig,
    "limits": LimitsConfig,
    "ingest": IngestConfig,
    "shutdown": ShutdownConfig,
    "logging": LoggingConfig,
    "delivery": DeliveryConfig,
    "tracing": TracingConfig,
}


def default_source() -> str:
    """``evbridge://<hostname>``: the ``source`` of events that do not set one."""
    return f"evbridge://{socket.gethostname()}"


#: ``EVBRIDGE_*`` names that are not config overrides: the config file's path, the
#: socket path the Helm chart gives the app container (a shell running both may have
#: it), and the fuzz suite's example count (``make fuzz``).
_NOT_OVERRIDES: Final = frozenset({"EVBRIDGE_CONFIG", "EVBRIDGE_SOCKET", "EVBRIDGE_FUZZ_EXAMPLES"})
_SPECIAL: Final = ("EVBRIDGE_TOKEN", "EVBRIDGE_SOURCE")


def env_names() -> list[str]:
    """Every ``EVBRIDGE_*`` name the config reads."""
    overrides = [
        f"EVBRIDGE_{section.upper()}_{key.upper()}"
        for section, kind in _SECTIONS.items()
        for key in kind.__struct_fields__
    ]
    return [*_SPECIAL, "EVBRIDGE_CONFIG", *overrides]


def _named_by_sinks(raw: dict[str, Any]) -> set[str]:
    """Variables the raw sinks' ``*_env`` keys name (a secret may be called ``EVBRIDGE_*``)."""
    sinks = raw.get("sinks")
    return {
        value
        for sink in (sinks if isinstance(sinks, list) else [])
        if isinstance(sink, Mapping)
        for key, value in sink.items()
        if isinstance(key, str) and key.endswith("_env") and isinstance(value, str)
    }


def _unknown_env(var: str) -> ConfigError:
    close = difflib.get_close_matches(var, env_names(), n=1, cutoff=0.75)
    hint = f"did you mean {close[0]}?" if close else "see docs/configuration.md#environment"
    return ConfigError(f"{var}: no such setting; {hint}", field=var)


def _env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """Apply ``EVBRIDGE_<SECTION>_<KEY>`` and ``EVBRIDGE_TOKEN`` / ``EVBRIDGE_SOURCE``.

    Any other ``EVBRIDGE_*`` name is refused (a typo would otherwise be ignored
    silently), with the closest real name, except `_NOT_OVERRIDES` and the
    variables the sinks' ``*_env`` keys name.
    """
    if env.get("EVBRIDGE_TOKEN"):
        raw.setdefault("auth", {})
        if not isinstance(raw["auth"], dict):
            raise ConfigError("auth: must be a mapping", field="auth")
        raw["auth"]["token"] = env["EVBRIDGE_TOKEN"]
    if env.get("EVBRIDGE_SOURCE"):
        raw["source"] = env["EVBRIDGE_SOURCE"]
    named = _named_by_sinks(raw)
    for var, text in env.items():
        if not var.startswith("EVBRIDGE_") or var in _SPECIAL or var in _NOT_OVERRIDES:
            continue
        if var in named:
            continue
        section, _, key = var[len("EVBRIDGE_") :].lower().partition("_")
        if section not in _SECTIONS or key not in _SECTIONS[section].__struct_fields__:
            raise _unknown_env(var)
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{section}: must be a mapping", field=section)
        try:
            target[key] = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            target[key] = text


def _handler_path(handlers: HandlersConfig, directory: Path | None) -> HandlersConfig:
    """``handlers.path`` made absolute: relative to ``directory`` (else the current
    directory), with ``directory`` itself first."""
    base = directory if directory is not None else Path.cwd()
    entries = ([directory] if directory is not None else []) + [base / p for p in handlers.path]
    resolved = tuple(dict.fromkeys(os.path.normpath(p.absolute()) for p in entries))
    return msgspec.structs.replace(handlers, path=resolved)


def parse_config(
    raw: Mapping[str, Any] | None,
    env: Mapping[str, str] | None = None,
    *,
    directory: str | os.PathLike[str] | None = None,
) -> Config:
    """Validate a decoded config mapping (plus env overrides) into a `Config`.

    ``directory`` is the config file's: handler modules there import, and a
    relative ``handlers.path`` is resolved against it (else the current directory).
    """
    data: dict[str, Any] = dict(raw or {})
    _env_overrides(data, os.environ if env is None else env)
    raw_sinks = data.pop("sinks", None) or []
    raw_routes = data.pop("routes", None) or []
    sources = parse_sources(data.pop("sources", None))
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
    sinks = {sink.name: sink for sink in SINKS.parse_list(raw_sinks, "sinks")}
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
        handlers=_handler_path(config.handlers, Path(directory) if directory else None),
        source=config.source or default_source(),
        sinks=tuple(sinks.values()),
        sources=sources,
        routes=routes,
    )


def _yaml_problem(exc: yaml.YAMLError, text: str, where: str) -> str:
    """A YAML error as lines: the file, then line and column, the problem and the line
    itself with a caret under the column (PyYAML's own text quotes ``<unicode string>``)."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return f"{where}: not valid YAML: {' '.join(str(exc).split())}"
    mark = exc.problem_mark
    lines = [
        f"{where}: not valid YAML",
        f"  line {mark.line + 1}, column {mark.column + 1}: {exc.problem}",
    ]
    source = text.splitlines()
    if mark.line < len(source):
        lines += [f"    {source[mark.line]}", f"    {' ' * mark.column}^"]
    if exc.context and exc.context_mark is not None:
        context = exc.context_mark
        lines.append(f"  ({exc.context} at line {context.line + 1}, column {context.column + 1})")
    return "\n".join(lines)


def load_yaml(text: str, where: str) -> dict[str, Any]:
    """Parse YAML text that must hold a mapping at the top."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_problem(exc, text, where)) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping (got {type(raw).__name__})")
    return raw


def default_config_text() -> str:
    """The embedded default config (what runs with no config file)."""
    return resources.files("bridge").joinpath("default.yaml").read_text()


def config_path(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> str | None:
    """The file `load_config` reads for ``path``: ``path``, else ``$EVBRIDGE_CONFIG``;
    None means the embedded default."""
    env = os.environ if env is None else env
    chosen = path if path is not None else env.get("EVBRIDGE_CONFIG") or None
    return None if chosen is None else os.fspath(chosen)


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Load ``path`` (or ``$EVBRIDGE_CONFIG``, or the embedded default) into a `Config`."""
    env = os.environ if env is None else env
    chosen = config_path(path, env)
    if chosen is None:
        return parse_config(load_yaml(default_config_text(), "default config"), env)
    try:
        text = Path(chosen).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(chosen)!r}: {exc.strerror}") from None
    return parse_config(load_yaml(text, str(chosen)), env, directory=Path(chosen).parent)
