"""A route's destination options, compiled once: the one form every destination takes.

`Destination.compile` parses a route's (or a dead-letter destination's) option
templates once, checks the literal values once with the sink type's
`RouteOptions.check` (``event=None``) and builds the `DestinationGuard` of each
template option. Config load compiles every route and every ``dead_letter``,
so an invalid destination is refused there, with its key path
(``routes[0].dead_letter.topic``), and never first met when an event is
dead-lettered. The router renders routes from it for every event; the
deliverer renders dead-letter destinations from it.

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
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import msgspec

from bridge.errors import BridgeError, ConfigError, TemplateError
from bridge.event import Event
from bridge.sinks.base import RouteOptions
from bridge.templates import Template

#: What a template option stands as while the literal options are checked at load: a
#: value every broker's destination rules accept, so only literal values can fail.
_PLACEHOLDER: Final = "x"


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
    templates: Mapping[str, Template],
    allow: Mapping[str, tuple[str, ...]] | None = None,
    deny: Mapping[str, tuple[str, ...]] | None = None,
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


def template_options(options: RouteOptions, where: str) -> dict[str, Template]:
    """Every string option of ``options`` parsed as a template, by encoded name.

    A bad template raises `ConfigError` at ``<where>.<option>``.
    """
    return {
        field.encode_name: Template(value, where=f"{where}.{field.encode_name}", option=field.name)
        for field in msgspec.structs.fields(options)
        if isinstance(value := getattr(options, field.name), str)
    }


class Destination:
    """One route's (or dead-letter destination's) options, compiled.

    ``options`` holds the literal values (``{{``/``}}`` already unescaped);
    `options_for` renders the template options for an event, guards them, and
    runs the sink type's `RouteOptions.check`. Build with `compile`.
    """

    __slots__ = ("_guards", "_key", "_templates", "options", "where")

    def __init__(
        self,
        options: RouteOptions,
        templates: Mapping[str, Template],
        guards: Mapping[str, DestinationGuard],
        where: str,
        key: Template | None = None,
    ) -> None:
        self.options = options
        self._templates = dict(templates)
        self._guards = dict(guards)
        self._key = key
        #: The key path the destination was configured at (``routes[0].dead_letter``).
        self.where = where

    @classmethod
    def compile(
        cls,
        options: RouteOptions,
        where: str,
        allow: Mapping[str, tuple[str, ...]] | None = None,
        deny: Mapping[str, tuple[str, ...]] | None = None,
        key: str | None = None,
    ) -> Destination:
        """Parse, check and guard ``options``, configured at key path ``where``
        (``key``: the route's key template, if it has one).

        Raises `ConfigError` naming ``<where>.<option>`` for a bad template or a
        literal value the broker could never take.
        """
        key_template = (
            Template(key, where=f"{where}.key", option="key") if key is not None else None
        )
        by_attr = {f.encode_name: f.name for f in msgspec.structs.fields(options)}
        literal: dict[str, str] = {}
        templates: dict[str, Template] = {}
        for name, template in template_options(options, where).items():
            if not template.source:
                # It would render empty, refused for every event: refuse it here instead.
                at = f"{where}.{name}"
                raise ConfigError(f"{at}: must not be empty", field=at)
            text = template.literal
            if text is None:
                templates[by_attr[name]] = template
            elif text != getattr(options, by_attr[name]):
                literal[by_attr[name]] = text  # it had ``{{`` or ``}}``: unescape once, here
        if literal:
            options = msgspec.structs.replace(options, **literal)
        # Template options stand as a placeholder, so that this checks the literal ones.
        sample = msgspec.structs.replace(options, **dict.fromkeys(templates, _PLACEHOLDER))
        try:
            sample.check(None)
        except BridgeError as exc:
            if exc.field not in templates:
                at = f"{where}.{exc.field}" if exc.field else where
                raise ConfigError(f"{at}: {exc.message}", field=at) from None
        guards = destination_guards(options, templates, allow, deny)
        return cls(options, templates, guards, where, key_template)

    @property
    def templated(self) -> bool:
        """True when some option is rendered per event."""
        return bool(self._templates)

    @property
    def template_names(self) -> frozenset[str]:
        """The options (attribute names) rendered per event; the others are literal."""
        return frozenset(self._templates)

    def options_for(self, event: Event) -> RouteOptions:
        """The options as rendered for ``event``, guarded and checked.

        Raises `TemplateError` naming the option (a missing field, a refused
        rendered value) or `InvalidEvent` from the sink type's check.
        """
        options = self.options
        if self._templates:
            rendered = {name: t.render(event) for name, t in self._templates.items()}
            for name, guard in self._guards.items():
                guard.check(rendered[name])
            options = msgspec.structs.replace(options, **rendered)
        options.check(event)
        return options

    def key_for(self, event: Event) -> str | None:
        """The partition / routing key: the route's key template rendered, else the event's."""
        return self._key.render(event) if self._key is not None else event.key

    def __repr__(self) -> str:
        return f"Destination({self.where}: {self.options!r})"
