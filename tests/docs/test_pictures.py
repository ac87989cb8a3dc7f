"""The committed pictures are current: the architecture diagram matches today's imports, and
its SVG was rendered from that very source."""

from __future__ import annotations

import difflib
import re
import shutil
from pathlib import Path

import pytest

from tests.docs import architecture

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = f"run `{architecture.COMMAND}` (or `make pictures`) and commit the result"


def test_the_architecture_source_matches_the_imports() -> None:
    committed = architecture.DOT_PATH.read_text()
    fresh = architecture.dot_source()
    if committed != fresh:
        diff = "".join(
            difflib.unified_diff(
                committed.splitlines(keepends=True),
                fresh.splitlines(keepends=True),
                "docs/architecture.dot (committed)",
                "from today's imports",
                n=1,
            )
        )
        pytest.fail(f"docs/architecture.dot is stale: {REGENERATE}.\n{diff[:4000]}")


def test_the_architecture_svg_was_rendered_from_the_committed_source() -> None:
    svg = architecture.SVG_PATH.read_text()
    found = re.search(r"<!-- rendered from architecture\.dot, sha256 ([0-9a-f]{64}) -->", svg)
    assert found, f"docs/architecture.svg carries no source hash: {REGENERATE}"
    expected = architecture.source_hash(architecture.DOT_PATH.read_text())
    assert found[1] == expected, f"docs/architecture.svg is stale: {REGENERATE}"


def test_every_module_is_in_the_picture_and_every_layer_is_drawn() -> None:
    source = architecture.dot_source()
    for name, _title, _prefixes in architecture.LAYERS:
        assert f"subgraph cluster_{name} " in source, name
    for module in architecture.MODULES:
        node = architecture._node(module)
        label = node if node.endswith("/") else module.rpartition(".")[2]
        assert label in source or module == "bridge", f"{module} is not drawn"


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz (dot) is not installed")
def test_rendering_puts_the_hash_of_its_source_in_the_svg() -> None:
    svg = architecture.render_svg("digraph g { a -> b; }\n")
    digest = architecture.source_hash("digraph g { a -> b; }\n")
    assert f"sha256 {digest} -->" in svg
    assert svg.index(digest) < svg.index("<svg")  # a comment before the root element


def test_the_docs_show_the_picture() -> None:
    assert "docs/architecture.svg" in (ROOT / "README.md").read_text()
    assert "architecture.svg" in (ROOT / "docs" / "architecture.md").read_text()
