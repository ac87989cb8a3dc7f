"""Key and destination templates: ``"events.{type}"``, ``"{data.user_id}"``.

A template is parsed once, at config load; rendering an event walks a
pre-split list of literal and field parts. ``{{`` and ``}}`` are literal braces.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

from bridge.errors import ConfigError, TemplateError
from bridge.event import Event

_ATTRS: Final = frozenset(
    {"type", "id", "source", "subject", "key", "kind", "specversion", "time", "correlation_id"}
)
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*\Z")
MAX_RENDERED_LEN: Final = 1024


def _data_getter(path: tuple[str, ...], spec: str) -> Callable[[Event], str]:
    def get(event: Event) -> str:
        value: Any = event.data
        for part in path:
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                raise TemplateError(f"the event has no field {spec!r}", field=spec)
        if value is None or isinstance(value, dict | list | bytes):
            raise TemplateError(f"field {spec!r} is not a scalar value", field=spec)
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return get


def _attr_getter(attr: str) -> Callable[[Event], str]:
    def get(event: Event) -> str:
        value = getattr(event, attr)
        if value is None:
            raise TemplateError(f"the event has no {attr!r}", field=attr)
        return str(value)

    return get


def _header_getter(name: str, spec: str) -> Callable[[Event], str]:
    def get(event: Event) -> str:
        try:
            return event.headers[name]
        except KeyError:
            raise TemplateError(f"the event has no header {name!r}", field=spec) from None

    return get


class Template:
    """A parsed template; `render` raises `TemplateError` naming a missing field."""

    __slots__ = ("_literal", "_option", "_parts", "fields", "source")

    def __init__(self, source: str, *, where: str, option: str | None = None) -> None:
        self.source = source
        #: The option (``topic``, ``routing_key``, ``key``) a bad rendered value is reported under.
        self._option = option or where
        parts: list[str | Callable[[Event], str]] = []
        fields: list[str] = []
        i, n = 0, len(source)
        buf: list[str] = []
        while i < n:
            ch = source[i]
            if source.startswith("{{", i) or source.startswith("}}", i):
                buf.append(ch)
                i += 2
            elif ch == "{":
                end = source.find("}", i)
                if end < 0:
                    raise ConfigError(f"{where}: unclosed '{{' in template {source!r}", field=where)
                spec = source[i + 1 : end].strip()
                if not _FIELD.match(spec):
                    raise ConfigError(
                        f"{where}: {spec!r} in template {source!r} is not a field name", field=where
                    )
                if buf:
                    parts.append("".join(buf))
                    buf = []
                parts.append(self._getter(spec, source, where))
                fields.append(spec)
                i = end + 1
            elif ch == "}":
                raise ConfigError(f"{where}: unmatched '}}' in template {source!r}", field=where)
            else:
                buf.append(ch)
                i += 1
        if buf:
            parts.append("".join(buf))
        self._parts = tuple(parts)
        self.fields = tuple(fields)
        self._literal = parts[0] if len(parts) == 1 and isinstance(parts[0], str) else None

    @staticmethod
    def _getter(spec: str, source: str, where: str) -> Callable[[Event], str]:
        head, _, rest = spec.partition(".")
        if head == "data":
            return _data_getter(tuple(rest.split(".")) if rest else (), spec)
        if head == "headers" and rest:
            return _header_getter(rest, spec)
        if head in _ATTRS and not rest:
            return _attr_getter(head)
        raise ConfigError(
            f"{where}: unknown field {spec!r} in template {source!r} "
            f"(use data.*, headers.*, or one of {', '.join(sorted(_ATTRS))})",
            field=where,
        )

    @property
    def is_literal(self) -> bool:
        """True when the template has no fields and always renders the same text."""
        return self._literal is not None

    @property
    def literal(self) -> str | None:
        """The text a field-less template always renders (``{{``/``}}`` unescaped), else None."""
        return self._literal

    def render(self, event: Event) -> str:
        """Render for ``event``.

        The result is never empty, at most `MAX_RENDERED_LEN` characters and has
        no control characters (no CR, LF or NUL reaches a broker's topic, routing
        key or message key); otherwise `TemplateError` names the option (``topic``,
        ``routing_key``, ``key``) and shows the rendered value, escaped.
        """
        if self._literal is not None:
            return self._literal
        out = "".join(p if isinstance(p, str) else p(event) for p in self._parts)
        if not out or len(out) > MAX_RENDERED_LEN or not out.isprintable():
            if not out:
                problem = "is empty"
            elif len(out) > MAX_RENDERED_LEN:
                problem = f"is {len(out)} characters, the limit is {MAX_RENDERED_LEN}"
            else:
                problem = "contains control characters"
            raise TemplateError(
                f"{self._option} rendered from template {self.source!r} as {out[:100]!r} {problem}",
                field=self._option,
            )
        return out

    def __repr__(self) -> str:
        return f"Template({self.source!r})"
