"""Shared helpers of config parsing: msgspec conversion with key paths, names.

Every error is a `ConfigError` naming the dotted key path and the bad value.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from bridge.errors import ConfigError
from bridge.redact import shown_config_value

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_AT = re.compile(r" - at `\$([^`]*)`")


def _lookup(raw: object, path: str) -> object:
    """The raw value at a msgspec path like ``.handlers.timeout_s`` or ``[2].x``."""
    value = raw
    for part in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        key, index = part
        try:
            value = value[int(index)] if index else value[key]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def convert(raw: object, kind: type[Any], prefix: str, whole: object = None) -> Any:
    """``msgspec.convert(raw, kind)``; a failure is a `ConfigError` at ``prefix`` + its path.

    ``whole``: what to quote for an error about ``raw`` itself, when ``raw`` is only
    part of what the user wrote (a route's options without its ``match`` and ``sink``).
    """
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _AT.search(message)
        sub = match.group(1) if match else ""
        problem = _AT.sub("", message)
        unknown = re.search(r"unknown field `([^`]*)`", problem)
        if unknown:
            sub = f"{sub}.{unknown.group(1)}"
            where = f"{prefix}{sub}".lstrip(".")
            raise ConfigError(f"{where}: unknown key", field=where) from None
        missing = re.search(r"missing required field `([^`]*)`", problem)
        if missing:
            where = f"{prefix}{sub}.{missing.group(1)}".lstrip(".")
            container = whole if not sub and whole is not None else _lookup(raw, sub)
            shown = shown_config_value(sub, container)
            raise ConfigError(f"{where}: is required (in {shown})", field=where) from None
        where = f"{prefix}{sub}".lstrip(".") or prefix.lstrip(".") or "(top level)"
        bad = shown_config_value(sub, _lookup(raw, sub))
        raise ConfigError(f"{where}: {problem} (got {bad})", field=where) from None


def check_name(value: object, where: str) -> str:
    """``value`` if it is a name of letters, digits, ``.``, ``_`` or ``-``; else `ConfigError`."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConfigError(
            f"{where}: must be a name of letters, digits, '.', '_' or '-' (got {value!r})",
            field=where,
        )
    return value
