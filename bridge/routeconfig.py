"""Route configuration: ``routes[]`` entries, their dead-letter destinations, and parsing.

Each route and each ``dead_letter`` is compiled at load into a `Destination`
(templates parsed once, literal values checked once, destination guards
built), so every destination is validated there with its key path, and the
router and the deliverer share the compiled form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

import msgspec

from bridge.configparse import check_name, convert
from bridge.destinations import Destination, template_options
from bridge.errors import ConfigError
from bridge.sinks.base import RouteOptions, SinkConfig, get_sink_type


class DeadLetterConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where a route's undeliverable events go: ``sink`` plus that sink's route fields."""

    sink: str
    options: RouteOptions
    #: The compiled options, set at config load (`destination` builds it otherwise).
    compiled: Destination | None = None

    @property
    def destination(self) -> Destination:
        """The compiled destination (validated at load for a parsed config)."""
        return self.compiled or Destination.compile(self.options, "dead_letter")


class RouteConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One routing rule: events whose type matches ``match`` go to ``sink``.

    ``key`` is a template for the partition / routing key (default: the
    event's own ``key``). ``options`` holds the sink-specific fields.

    A template option hands the choice of destination to whoever sends the
    event. ``allow`` and ``deny`` bound that choice: per template option
    (``topic``, ``routing_key``, ``exchange``), glob patterns the rendered
    value must match (one of ``allow``, if given) and must not match (any of
    ``deny``). The broker's internal destinations (the option type's
    ``internal`` patterns) are refused whatever these say.
    """

    name: str
    match: str
    sink: str
    options: RouteOptions
    key: str | None = None
    #: Overrides ``delivery.mode`` for this route (null: use it).
    delivery: Literal["sync", "durable"] | None = None
    dead_letter: DeadLetterConfig | None = None
    allow: dict[str, tuple[str, ...]] = {}
    deny: dict[str, tuple[str, ...]] = {}
    #: The compiled options and key, set at config load (`destination` builds it otherwise).
    compiled: Destination | None = None

    #: The keys every route has, one line of meaning each (docs/configuration.md is
    #: generated from them); the other keys of a route are its sink type's route options.
    field_docs: ClassVar[Mapping[str, str]] = {
        "name": "The route's name in logs, metrics and `/v1/info`.",
        "match": "Event type pattern: exact text, or a glob (`*` matches across dots).",
        "sink": "Name of the sink (in `sinks`) the matching events go to.",
        "key": "Template for the partition / routing key; default: the event's own `key`.",
        "delivery": "`sync` or `durable` for this route; null: `delivery.mode`.",
        "dead_letter": "Where undeliverable events go: `{sink: NAME, <that sink's route "
        "options>}`; null: none.",
        "allow": "Per template option, glob patterns a rendered value must match (one of them).",
        "deny": "Per template option, glob patterns a rendered value must not match.",
    }

    @property
    def destination(self) -> Destination:
        """The compiled destination (validated at load for a parsed config)."""
        if self.compiled is not None:
            return self.compiled
        return Destination.compile(
            self.options, f"route {self.name}", self.allow, self.deny, self.key or None
        )


#: The keys common to every route; all others are the sink type's route options.
_ROUTE_KEYS = frozenset(RouteConfig.field_docs)


def _sink_named(name: object, where: str, sinks: Mapping[str, SinkConfig]) -> SinkConfig:
    sink = sinks.get(name) if isinstance(name, str) else None
    if sink is None:
        raise ConfigError(
            f"{where}: no sink named {name!r} (sinks: {', '.join(sinks) or 'none'})", field=where
        )
    return sink


def parse_route(
    raw: object, where: str, sinks: Mapping[str, SinkConfig], index: int
) -> RouteConfig:
    """One ``routes[]`` entry at key path ``where``, compiled (see `Destination.compile`)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping (got {raw!r})", field=where)
    common = {k: v for k, v in raw.items() if k in _ROUTE_KEYS}
    rest = {k: v for k, v in raw.items() if k not in _ROUTE_KEYS}
    for required in ("match", "sink"):
        value = common.get(required)
        if not isinstance(value, str) or not value:
            raise ConfigError(
                f"{where}.{required}: is required and must be a non-empty string (got {value!r})",
                field=f"{where}.{required}",
            )
    name = common.get("name", f"route{index}")
    check_name(name, f"{where}.name")
    sink = _sink_named(common["sink"], f"{where}.sink", sinks)
    options: RouteOptions = convert(rest, get_sink_type(sink.type).route, f".{where}", raw)
    key = common.get("key")
    if key is not None and not isinstance(key, str):
        raise ConfigError(
            f"{where}.key: must be a template string (got {key!r})", field=f"{where}.key"
        )
    delivery = common.get("delivery")
    if delivery not in (None, "sync", "durable"):
        raise ConfigError(
            f"{where}.delivery: must be 'sync' or 'durable' (got {delivery!r})",
            field=f"{where}.delivery",
        )
    allow = _parse_patterns(common.get("allow"), f"{where}.allow", options)
    deny = _parse_patterns(common.get("deny"), f"{where}.deny", options)
    compiled = Destination.compile(options, where, allow, deny, key or None)
    dead_letter = _parse_dead_letter(common.get("dead_letter"), f"{where}.dead_letter", sinks)
    return RouteConfig(
        name=name,
        match=common["match"],
        sink=sink.name,
        options=options,
        key=key,
        delivery=delivery,
        dead_letter=dead_letter,
        allow=allow,
        deny=deny,
        compiled=compiled,
    )


def _parse_patterns(raw: object, where: str, options: RouteOptions) -> dict[str, tuple[str, ...]]:
    """``allow`` / ``deny``: ``{<template option>: [glob, ...]}`` (null: none)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{where}: must map template options to lists of glob patterns (got {raw!r})",
            field=where,
        )
    templated = {
        name
        for name, template in template_options(options, where).items()
        if not template.is_literal
    }
    found: dict[str, tuple[str, ...]] = {}
    for option, patterns in raw.items():
        at = f"{where}.{option}"
        if option not in templated:
            raise ConfigError(
                f"{at}: the route has no template option {option!r} "
                f"(template options: {', '.join(sorted(templated)) or 'none'})",
                field=at,
            )
        if isinstance(patterns, str):
            patterns = [patterns]
        if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
            raise ConfigError(
                f"{at}: must be a list of non-empty glob patterns (got {patterns!r})", field=at
            )
        found[option] = tuple(patterns)
    return found


def _parse_dead_letter(
    raw: object, where: str, sinks: Mapping[str, SinkConfig]
) -> DeadLetterConfig | None:
    """``dead_letter: {sink: NAME, <that sink's route fields>}`` (null: none), compiled."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping with a 'sink' (got {raw!r})", field=where)
    sink = _sink_named(raw.get("sink"), f"{where}.sink", sinks)
    rest = {k: v for k, v in raw.items() if k != "sink"}
    options: RouteOptions = convert(rest, get_sink_type(sink.type).route, f".{where}", raw)
    compiled = Destination.compile(options, where)
    return DeadLetterConfig(sink=sink.name, options=options, compiled=compiled)
