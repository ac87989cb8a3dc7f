"""Routing rules: event type glob → sink, destination and key. First match wins.

Each route's options come compiled from config load (`bridge.destinations`):
templates parsed, literal values checked and destination guards built once,
so resolving an event renders only what varies per event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from bridge.config import RouteConfig
from bridge.destinations import DestinationGuard, compile_glob, destination_guards
from bridge.errors import NoRoute
from bridge.event import Event
from bridge.sinks.base import Outgoing

__all__ = ["DestinationGuard", "Router", "compile_glob", "destination_guards"]

_CACHE_LIMIT: Final = 4096


class _Rule:
    __slots__ = ("config", "destination", "matches")

    def __init__(self, config: RouteConfig) -> None:
        self.config = config
        self.matches = compile_glob(config.match)
        self.destination = config.destination

    def resolve(self, event: Event) -> Outgoing:
        destination = self.destination
        options = destination.options_for(event)
        return Outgoing(event, self.config.name, options, destination.key_for(event))


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

    def outgoing(self, event: Event) -> Outgoing:
        """The outgoing item for a notification event (`resolve` without the sink name).

        Raises as `resolve` does.
        """
        rule = self._by_type.get(event.type) or self._rule_for(event.type)
        if rule is None:
            raise NoRoute(f"no route matches event type {event.type!r}", field="type")
        return rule.resolve(event)

    def resolve(self, event: Event) -> tuple[str, Outgoing]:
        """(sink name, outgoing item) for a notification event.

        Raises `NoRoute` when no rule matches and `TemplateError` when a
        template names a field the event lacks.
        """
        rule = self._rule_for(event.type)
        if rule is None:
            raise NoRoute(f"no route matches event type {event.type!r}", field="type")
        return rule.config.sink, rule.resolve(event)
