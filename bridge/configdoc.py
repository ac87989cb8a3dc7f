"""docs/configuration.md, generated from the config types.

``python -m bridge.configdoc > docs/configuration.md`` writes the page. Every
key comes from a msgspec Struct (type and default read with `msgspec.inspect`)
and its one line of meaning from the ``field_docs`` table kept on that Struct.
A key without a meaning, or a meaning for a key that does not exist, is a
`DocError`: the page cannot drift from the types.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Any, Final

import msgspec
import msgspec.inspect as mi

from bridge.config import Config
from bridge.routeconfig import RouteConfig
from bridge.sinks.base import builtin_sink_types, get_sink_type
from bridge.sources.base import builtin_source_types, get_source_type

__all__ = ["DocError", "Row", "Section", "main", "reference", "render"]

#: The command that regenerates the page (quoted on it).
COMMAND: Final = "python -m bridge.configdoc > docs/configuration.md"

#: Defaults filled in at load rather than declared on the type.
_COMPUTED_DEFAULTS: Final[Mapping[tuple[type[Any], str], str]] = {
    (Config, "source"): "`evbridge://<hostname>`",
    (RouteConfig, "name"): "`route<index>`",
}
#: Keys whose YAML shape is not what their declared (parsed) type says.
_SHOWN_TYPES: Final[Mapping[tuple[type[Any], str], str]] = {
    (Config, "sinks"): "list of sinks (below)",
    (Config, "sources"): "list of sources (below)",
    (Config, "routes"): "list of routes (below)",
    (RouteConfig, "dead_letter"): "mapping (`sink` and that sink's route options) or null",
    (RouteConfig, "allow"): "mapping of template option to list of globs",
    (RouteConfig, "deny"): "mapping of template option to list of globs",
}


class DocError(Exception):
    """A config type and its ``field_docs`` disagree."""


class Row(msgspec.Struct, frozen=True):
    """One key of one section: how the page shows it."""

    key: str
    type: str
    default: str
    meaning: str


class Section(msgspec.Struct, frozen=True):
    """A heading and the table of keys under it."""

    title: str
    intro: str
    rows: tuple[Row, ...]


def _docs_of(kind: type[Any]) -> dict[str, str]:
    """``field_docs`` of ``kind`` and its bases (a subclass lists only its own keys)."""
    found: dict[str, str] = {}
    for klass in reversed(kind.__mro__):
        found.update(vars(klass).get("field_docs", {}))
    return found


def _check(kind: type[Any], keys: list[str], docs: Mapping[str, str]) -> None:
    missing = [k for k in keys if not docs.get(k, "").strip()]
    if missing:
        raise DocError(f"{kind.__qualname__}: no field_docs entry for {', '.join(missing)}")
    extra = sorted(set(docs) - set(keys))
    if extra:
        raise DocError(f"{kind.__qualname__}: field_docs names no such key: {', '.join(extra)}")


def _bound(info: Any) -> str:
    lo = f">= {info.ge}" if info.ge is not None else f"> {info.gt}" if info.gt is not None else ""
    hi = f"<= {info.le}" if info.le is not None else f"< {info.lt}" if info.lt is not None else ""
    return ", ".join(b for b in (lo, hi) if b)


def type_text(info: Any) -> str:
    """A `msgspec.inspect` type as the page shows it (``integer (> 0)``, ``list of strings``)."""
    if isinstance(info, mi.UnionType):
        parts = [type_text(t) for t in info.types if not isinstance(t, mi.NoneType)]
        nullable = any(isinstance(t, mi.NoneType) for t in info.types)
        return " or ".join(parts) + (" or null" if nullable else "")
    if isinstance(info, mi.LiteralType):
        return "one of " + ", ".join(f"`{_yaml(v)}`" for v in info.values)
    if isinstance(info, mi.BoolType):
        return "boolean"
    if isinstance(info, mi.IntType | mi.FloatType):
        name = "integer" if isinstance(info, mi.IntType) else "number"
        bound = _bound(info)
        return f"{name} ({bound})" if bound else name
    if isinstance(info, mi.StrType):
        if info.pattern is not None:
            return f"string matching `{info.pattern}`"
        return f"string (at most {info.max_length})" if info.max_length else "string"
    if isinstance(info, mi.VarTupleType | mi.ListType):
        if isinstance(info.item_type, mi.StructType):
            return "list of mappings (below)"
        item = type_text(info.item_type)
        return f"list of {item}s" if " " not in item else f"list of ({item})"
    if isinstance(info, mi.DictType):
        return f"mapping of {type_text(info.key_type)} to {type_text(info.value_type)}"
    if isinstance(info, mi.StructType):
        return "mapping (below)"
    if isinstance(info, mi.NoneType):
        return "null"
    raise DocError(f"no text for config type {info!r}")


def _yaml(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]" if value else "[]"
    if isinstance(value, dict):
        return "{}" if not value else msgspec.json.encode(value).decode()
    return str(value)


def _default(kind: type[Any], field: Any) -> str:
    computed = _COMPUTED_DEFAULTS.get((kind, field.name))
    if computed is not None:
        return computed
    if field.required:
        return "required"
    value = field.default
    if value is msgspec.NODEFAULT:
        value = field.default_factory()
    if isinstance(value, msgspec.Struct):
        return "(section)"
    return f"`{_yaml(value)}`"


def _rows(kind: type[Any], only: frozenset[str] | None = None) -> list[Row]:
    """The rows of a Struct's keys (``only``: those keys, in declaration order)."""
    info = mi.type_info(kind)
    assert isinstance(info, mi.StructType)
    fields = [f for f in info.fields if only is None or f.name in only]
    docs = _docs_of(kind)
    _check(kind, [f.name for f in fields], docs)
    return [
        Row(
            f.encode_name,
            _SHOWN_TYPES.get((kind, f.name)) or type_text(f.type),
            _default(kind, f),
            docs[f.name],
        )
        for f in fields
    ]


def _struct_fields(kind: type[Any]) -> Iterator[tuple[str, type[Any]]]:
    """The (key, Struct type) of each field of ``kind`` that is itself a section."""
    info = mi.type_info(kind)
    assert isinstance(info, mi.StructType)
    for field in info.fields:
        types = field.type.types if isinstance(field.type, mi.UnionType) else (field.type,)
        for t in types:
            if isinstance(t, mi.StructType):
                yield field.name, t.cls


def _struct_lists(kind: type[Any]) -> Iterator[tuple[str, type[Any]]]:
    """The (key, item Struct type) of each field of ``kind`` that is a list of sections
    (``handlers.http``); the top level's ``sinks`` and ``routes`` are laid out by hand."""
    info = mi.type_info(kind)
    assert isinstance(info, mi.StructType)
    for field in info.fields:
        item = field.type
        if isinstance(item, mi.VarTupleType | mi.ListType) and isinstance(
            item.item_type, mi.StructType
        ):
            yield field.name, item.item_type.cls


def _intro(kind: type[Any]) -> str:
    """The first paragraph of a type's docstring, in Markdown's code quotes."""
    return (kind.__doc__ or "").strip().split("\n\n")[0].replace("``", "`")


def _nested(path: str, kind: type[Any], suffix: str = "") -> Iterator[Section]:
    """The section of ``kind`` at key ``path`` and, after it, those of its Struct-typed keys."""
    yield Section(f"`{path}`{suffix}", _intro(kind), tuple(_rows(kind)))
    for key, sub in _struct_fields(kind):
        yield from _nested(f"{path}.{key}", sub, suffix)
    for key, sub in _struct_lists(kind):
        yield from _nested(f"{path}.{key}[]", sub, suffix)


def reference() -> list[Section]:
    """Every section of the page, in order; `DocError` if a key has no meaning."""
    sections = [Section("Top level", "The keys of the config file itself.", tuple(_rows(Config)))]
    for name, kind in _struct_fields(Config):
        sections.extend(_nested(name, kind))
    sections.append(
        Section(
            "`routes[]`",
            "Keys every route has; its other keys are the route options of its sink's "
            "type (below, per sink type).",
            tuple(_rows(RouteConfig, frozenset(RouteConfig.field_docs))),
        )
    )
    for kind_name in builtin_sink_types():
        sink_type = get_sink_type(kind_name)
        sections.extend(_nested("sinks[]", sink_type.config, f" with `type: {kind_name}`"))
        route = sink_type.route
        sections.append(
            Section(f"`routes[]` to a `{kind_name}` sink", _intro(route), tuple(_rows(route)))
        )
    for kind_name in builtin_source_types():
        source = get_source_type(kind_name).config
        sections.extend(_nested("sources[]", source, f" with `type: {kind_name}`"))
    return sections


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _env_section() -> str:
    names = [
        f"`EVBRIDGE_{name.upper()}_{key.upper()}`"
        for name, kind in _struct_fields(Config)
        for key in kind.__struct_fields__
    ]
    return (
        "## Environment\n\n"
        "- `EVBRIDGE_CONFIG`: the config file when `--config` is not given.\n"
        "- `EVBRIDGE_TOKEN`: sets `auth.token`; `EVBRIDGE_SOURCE`: sets `source`.\n"
        "- `EVBRIDGE_<SECTION>_<KEY>` sets one key of a section; the value is read as YAML "
        "(`null`, `2.5`, `[a, b]`). The names: " + ", ".join(names) + ".\n"
        "- Any other `EVBRIDGE_*` name is refused at load, with the closest real name "
        "(`EVBRIDGE_HANDLER_TIMEOUT_S: no such setting; did you mean "
        "EVBRIDGE_HANDLERS_TIMEOUT_S?`), except `EVBRIDGE_SOCKET` (the app container's "
        "socket path), `EVBRIDGE_FUZZ_EXAMPLES` (the fuzz suite's) and a variable a sink's "
        "`*_env` key names.\n"
    )


def render(sections: list[Section] | None = None) -> str:
    """The whole page, as Markdown."""
    out = [
        "# Configuration reference\n",
        f"<!-- Generated from the config types by `{COMMAND}`; do not edit by hand. -->\n",
        "One YAML file (`evbridge serve --config FILE`, or `$EVBRIDGE_CONFIG`; without either "
        'the embedded default applies: one `file` sink and a `"*"` route to it), plus '
        "`EVBRIDGE_*` environment overrides (at the end). Unknown keys are refused; every "
        "error names the key path and the bad value. Sizes are in bytes, durations in the "
        "unit their name ends in (`_s`, `_ms`).\n",
    ]
    for section in reference() if sections is None else sections:
        out.append(f"## {section.title}\n")
        intro = " ".join(section.intro.split())
        if intro:
            out.append(f"{intro}\n")
        if not section.rows:
            out.append("No keys.\n")
            continue
        out.append("| key | type | default | meaning |\n| --- | --- | --- | --- |")
        out.extend(
            f"| `{r.key}` | {_cell(r.type)} | {_cell(r.default)} | {_cell(r.meaning)} |"
            for r in section.rows
        )
        out.append("")
    out.append(_env_section())
    return "\n".join(out)


def main() -> None:
    """Write the page to stdout."""
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
