"""A registry of plug-in types keyed by the config's ``type``: sinks and sources share it.

A type is a module exposing one attribute (``SINK_TYPE``, ``SOURCE_TYPE``) that
describes it. Built-in types are imported lazily, so a broker library is imported
only when a config names its type; a registry may also look types up in an
entry-point group. Errors name the key path and the value (``sinks[0].type``).
"""

from __future__ import annotations

import builtins
import importlib
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from typing import Generic, Protocol, TypeVar

import msgspec

from bridge.configparse import check_name, convert
from bridge.errors import ConfigError


class PluginType(Protocol):
    """What a registered type has: its ``type`` name and its config class."""

    @property
    def type(self) -> str: ...

    @property
    def config(self) -> builtins.type[msgspec.Struct]: ...


class NamedConfig(Protocol):
    """What every config of a registered type has: its name, unique in its list."""

    @property
    def name(self) -> str: ...


P = TypeVar("P", bound=PluginType)
C = TypeVar("C", bound=NamedConfig)


class Registry(Generic[P, C]):
    """The types of one kind of plug-in (``kind``: ``sink``, ``source``), by ``type`` name.

    ``builtin`` maps a built-in type's name to its module; ``attribute`` is what the
    module exposes; ``group``, if given, is an entry-point group naming more modules.
    """

    def __init__(
        self,
        kind: str,
        attribute: str,
        builtin: Mapping[str, str],
        *,
        group: str | None = None,
    ) -> None:
        self.kind = kind
        self._attribute = attribute
        self._builtin = builtin
        self._group = group
        self._registered: dict[str, P] = {}

    def builtin_types(self) -> tuple[str, ...]:
        """The ``type`` names that ship with evbridge."""
        return tuple(self._builtin)

    def register(self, plugin: P) -> None:
        """Make a type available to configs under ``plugin.type``."""
        self._registered[plugin.type] = plugin

    def get(self, name: str, *, where: str = "type") -> P:
        """Look up a type, importing its module on first use; ``where`` names the key."""
        found = self._registered.get(name)
        if found is not None:
            return found
        module_name = self._builtin.get(name)
        if module_name is None and self._group is not None:
            for ep in entry_points(group=self._group):
                if ep.name == name:
                    module_name = ep.value
                    break
        if module_name is None:
            known = sorted({*self._builtin, *self._registered})
            raise ConfigError(
                f"{where}: unknown {self.kind} type {name!r} (known: {', '.join(known)})",
                field=where,
            )
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"{where}: {self.kind} type {name!r} needs a library that is not installed "
                f"({exc}); install it with: pip install 'evbridge[{name}]'",
                field=where,
            ) from None
        plugin: P = getattr(module, self._attribute)
        self.register(plugin)
        return plugin

    def parse(self, raw: object, where: str) -> C:
        """One config entry (a mapping with ``name`` and ``type``) as its type's config."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: must be a mapping (got {raw!r})", field=where)
        check_name(raw.get("name"), f"{where}.name")
        kind = raw.get("type")
        if not isinstance(kind, str):
            raise ConfigError(f"{where}.type: is required (got {kind!r})", field=f"{where}.type")
        config_class = self.get(kind, where=f"{where}.type").config
        parsed: C = convert(dict(raw), config_class, f".{where}")
        return parsed

    def parse_list(self, raw: Sequence[object], section: str) -> tuple[C, ...]:
        """The entries of ``section`` (``sinks``, ``sources``); a name used twice is refused."""
        parsed: dict[str, C] = {}
        for i, item in enumerate(raw):
            config = self.parse(item, f"{section}[{i}]")
            if config.name in parsed:
                raise ConfigError(
                    f"{section}[{i}].name: {config.name!r} is used twice",
                    field=f"{section}[{i}].name",
                )
            parsed[config.name] = config
        return tuple(parsed.values())
