"""docs/configuration.md is generated from the config types and matches them key for key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import msgspec
import pytest

from bridge import configdoc
from bridge.config import Config, HandlersConfig
from bridge.configdoc import COMMAND, DocError, reference, render
from bridge.routeconfig import RouteConfig
from bridge.sinks.base import builtin_sink_types, get_sink_type
from bridge.sources.base import builtin_source_types, get_source_type

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "configuration.md"


def page_keys(text: str) -> set[tuple[str, str]]:
    """(section heading, key) for every table row of the page."""
    found: set[tuple[str, str]] = set()
    heading = ""
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
        row = re.match(r"\| `([^`]+)` \|", line)
        if row:
            found.add((heading, row.group(1)))
    return found


def _struct_keys(kind: type[Any]) -> list[tuple[str, type[Any]]]:
    """(key, Struct type) of each key of ``kind`` whose value is a Struct (or null);
    lists of Structs (``sinks``, ``routes``) have sections of their own."""
    found = []
    for key, hint in get_type_hints(kind).items():
        if key not in kind.__struct_fields__:
            continue
        union = get_origin(hint) in (Union, UnionType)
        for arg in get_args(hint) if union else (hint,):
            if isinstance(arg, type) and issubclass(arg, msgspec.Struct):
                found.append((key, arg))
    return found


def _list_keys(kind: type[Any]) -> list[tuple[str, type[Any]]]:
    """(key, item Struct type) of each key of a section whose value is a list of
    Structs (``handlers.http``): its items' keys have a section of their own."""
    found = []
    for key, hint in get_type_hints(kind).items():
        if key not in kind.__struct_fields__ or get_origin(hint) not in (tuple, list):
            continue
        item = get_args(hint)[0]
        if isinstance(item, type) and issubclass(item, msgspec.Struct):
            found.append((key, item))
    return found


def _section_keys(path: str, kind: type[Any], suffix: str = "") -> set[tuple[str, str]]:
    keys = {(f"`{path}`{suffix}", key) for key in kind.__struct_fields__}
    for key, sub in _struct_keys(kind):
        keys |= _section_keys(f"{path}.{key}", sub, suffix)
    for key, sub in _list_keys(kind):
        keys |= _section_keys(f"{path}.{key}[]", sub, suffix)
    return keys


def type_keys() -> set[tuple[str, str]]:
    """(section heading, key) for every key the config types declare, read through
    `typing` rather than the generator's `msgspec.inspect` walk."""
    keys = {("Top level", name) for name in Config.__struct_fields__}
    for name, section in _struct_keys(Config):
        keys |= _section_keys(name, section)
    keys |= {("`routes[]`", key) for key in RouteConfig.field_docs}
    for kind_name in builtin_sink_types():
        sink_type = get_sink_type(kind_name)
        keys |= _section_keys("sinks[]", sink_type.config, f" with `type: {kind_name}`")
        route = f"`routes[]` to a `{kind_name}` sink"
        keys |= {(route, key) for key in sink_type.route.__struct_fields__}
    for kind_name in builtin_source_types():
        source = get_source_type(kind_name).config
        keys |= _section_keys("sources[]", source, f" with `type: {kind_name}`")
    return keys


def test_the_page_is_current() -> None:
    assert PAGE.read_text() == render(), f"docs/configuration.md is stale: run {COMMAND}"


def test_every_key_is_on_the_page_and_the_page_names_no_other() -> None:
    on_page = page_keys(PAGE.read_text())
    declared = type_keys()
    assert not declared - on_page, f"keys missing from the page: {sorted(declared - on_page)}"
    assert not on_page - declared, f"the page names no such keys: {sorted(on_page - declared)}"


def test_every_row_has_type_default_and_meaning() -> None:
    for section in reference():
        for row in section.rows:
            assert row.type, (section.title, row)
            assert row.default, (section.title, row)
            assert row.meaning, (section.title, row)


def test_a_key_without_a_meaning_stops_the_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = dict(HandlersConfig.field_docs)
    del docs["timeout_s"]
    monkeypatch.setattr(HandlersConfig, "field_docs", docs)
    with pytest.raises(DocError, match="HandlersConfig: no field_docs entry for timeout_s"):
        reference()


def test_a_meaning_for_a_key_that_does_not_exist_stops_the_generator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        HandlersConfig, "field_docs", {**HandlersConfig.field_docs, "timeout": "gone"}
    )
    with pytest.raises(DocError, match="field_docs names no such key: timeout"):
        reference()


def test_types_and_defaults_are_shown_as_yaml() -> None:
    rows = {(s.title, r.key): r for s in reference() for r in s.rows}
    timeout = rows[("`handlers`", "timeout_s")]
    assert (timeout.type, timeout.default) == ("number (> 0)", "`5.0`")
    assert rows[("`listen`", "tcp")].type == "string or null"
    assert rows[("`sinks[]` with `type: kafka`", "bootstrap_servers")].default == "required"
    assert rows[("`logging`", "level")].type.startswith("one of `debug`")
    assert rows[("Top level", "source")].default == "`evbridge://<hostname>`"
    assert rows[("`handlers`", "http")].type == "list of mappings (below)"
    assert rows[("`handlers.http[]`", "name")].default == "required"


def test_the_module_writes_the_page_to_stdout() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bridge.configdoc"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout == configdoc.render()
