"""Routing rules: event type glob → sink, destination and key. First match wins.

A destination option that is a template (``topic: "events.{subject}"``) lets the
event's sender choose where it goes. The rendered value is refused (a 400
naming the option, code ``destination_refused``) when it names one of the
broker's internal destinations (`RouteOptions.internal`), matches none of the
route's ``allow`` patterns for that option (when it has some) or any of its
``deny`` patterns.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from typing import Final

import msgspec

from bridge.config import RouteConfig
from bridge.errors import BridgeError, ConfigError, NoRoute, TemplateError
from bridge.event import Event
from bridge.sinks.base import Outgoing, RouteOptions
from bridge.templates import Template

_CACHE_LIMIT: Final = 4096


def compile_glob(pattern: str) -> Callable[[str], bool]:
    """A matcher for an event-type glob: exact text, or ``*``/``?``/``[...]`` patterns.

    ``*`` matches across dots (``"invite.*"`` matches ``"invite.a.b"``).
    """
    if pattern == "*":
        return lambda _type: True
    if not any(ch in pattern for ch in "*?["):
        return pattern.__eq__
    match = re.compile(fnmatch.translate(pattern)).match
    return lambda type_: match(type_) is not None


class DestinationGuard:
    """Checks one template option's rendered values: internal, ``allow`` and ``deny`` globs."""

    __slots__ = ("_allow", "_deny", "_internal", "option", "source")

    def __init__(
        self,
        option: str,
        source: str,
        internal: Sequence[str],
        allow: Sequence[str] = (),
        deny: Sequence[str] = (),
    ) -> None:
        self.option = option
        self.source = source
        self._internal = [(p, compile_glob(p)) for p in internal]
        self._allow = [compile_glob(p) for p in allow]
        self._deny = [(p, compile_glob(p)) for p in deny]

    def check(self, value: str) -> None:
        """Raise `TemplateError` (field: the option) if ``value`` may not be a destination."""
        for pattern, matches in self._internal:
            if matches(value):
                self._refuse(value, f"names an internal destination of the broker ({pattern!r})")
        if self._allow and not any(matches(value) for matches in self._allow):
            self._refuse(value, "matches none of the route's allow patterns")
        for pattern, matches in self._deny:
            if matches(value):
                self._refuse(value, f"matches the route's deny pattern {pattern!r}")

    def _refuse(self, value: str, problem: str) -> None:
        raise TemplateError(
            f"{self.option} rendered from template {self.source!r} as {value[:100]!r} {problem}",
            field=self.option,
            code="destination_refused",
        )


def destination_guards(
    options: RouteOptions,
    templates: dict[str, Template],
    allow: dict[str, tuple[str, ...]] | None = None,
    deny: dict[str, tuple[str, ...]] | None = None,
) -> dict[str, DestinationGuard]:
    """The guards for the template options of ``options`` that need one."""
    guards: dict[str, DestinationGuard] = {}
    for name, template in templates.items():
        internal = type(options).internal.get(name, ())
        allowed = (allow or {}).get(name, ())
        denied = (deny or {}).get(name, ())
        if internal or allowed or denied:
            guards[name] = DestinationGuard(name, template.source, internal, allowed, denied)
    return guards


class _Rule:
    __slots__ = ("config", "guards", "key", "matches", "options", "templates")

    def __init__(self, config: RouteConfig) -> None:
        self.config = config
        self.matches = compile_glob(config.match)
        self.key = (
            Template(config.key, where=f"route {config.name}.key", option="key")
            if config.key
            else None
        )
        self.options = config.options
        # Only fields that really vary per event are rendered per event.
        self.templates: dict[str, Template] = {}
        for field in msgspec.structs.fields(config.options):
            value = getattr(config.options, field.name)
            if isinstance(value, str):
                template = Template(
                    value, where=f"route {config.name}.{field.name}", option=field.name
                )
                if not template.is_literal or "{{" in value or "}}" in value:
                    self.templates[field.name] = template
        self.guards = destination_guards(self.options, self.templates, config.allow, config.deny)
        if not self.templates:
            try:
                self.options.check(None)
            except BridgeError as exc:
                where = f"route {config.name}.{exc.field}"
                raise ConfigError(f"{where}: {exc.message}", field=where) from None

    def resolve(self, event: Event) -> Outgoing:
        options: RouteOptions = self.options
        if self.templates:
            rendered = {name: t.render(event) for name, t in self.templates.items()}
            for name, guard in self.guards.items():
                guard.check(rendered[name])
            options = msgspec.structs.replace(options, **rendered)
        options.check(event)
        key = self.key.render(event) if self.key is not None else event.key
        return Outgoing(event, self.config.name, options, key)


class Router:
    """Resolves notification events to `Outgoing` items by ordered rules.

    The rule chosen for an event type is cached (bounded), so resolving is a
    dict lookup plus any per-event template rendering.
    """

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        self._rules = [_Rule(r) for r in routes]
        self._by_type: dict[str, _Rule | None] = {}

    @property
    def routes(self) -> list[RouteConfig]:
        return [rule.config for rule in self._rules]

    def _rule_for(self, type_: str) -> _Rule | None:
        try:
            return self._by_type[type_]
        except KeyError:
            pass
        found = next((rule for rule in self._rules if rule.matches(type_)), None)
        if len(self._by_type) >= _CACHE_LIMIT:
            self._by_type.clear()
        self._by_type[type_] = found
        return found

    def sink_for(self, event: Event) -> str:
        """The sink name an event routes to; raises `NoRoute`."""
        rule = self._rule_for(event.type)
        if rule is None:
            raise NoRoute(f"no route matches event type {event.type!r}", field="type")
        return rule.config.sink

    def resolve(self, event: Event) -> tuple[str, Outgoing]:
        """(sink name, outgoing item) for a notification event.

        Raises `NoRoute` when no rule matches and `TemplateError` when a
        template names a field the event lacks.
        """
        rule = self._rule_for(event.type)
        if rule is None:
            raise NoRoute(f"no route matches event type {event.type!r}", field="type")
        return rule.config.sink, rule.resolve(event)
