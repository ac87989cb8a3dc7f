"""The committed pictures are current: the architecture diagram matches today's imports and
its SVG was rendered from that very source; the dashboard picture was drawn from today's
dashboard JSON, with queries the drawing can evaluate."""

from __future__ import annotations

import difflib
import json
import re
import shutil
import struct
from pathlib import Path

import pytest

from tests.docs import architecture, dashboard
from tests.docs.promql import Scrape
from tests.unit.test_architecture import LAYERS, MODULES

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
    for name, _prefixes in LAYERS:  # every layer the layering test knows
        assert f"subgraph cluster_{name} " in source, name
    for module in MODULES:
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


def _png_text(path: Path) -> dict[str, str]:
    """The tEXt chunks of a PNG file (where matplotlib writes its metadata)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    found, at = {}, 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind = data[at + 4 : at + 8]
        if kind == b"tEXt":
            key, _, value = data[at + 8 : at + 8 + length].partition(b"\0")
            found[key.decode("latin-1")] = value.decode("latin-1")
        at += 12 + length
    return found


def test_the_dashboard_picture_was_drawn_from_the_committed_dashboard() -> None:
    meta = _png_text(dashboard.PNG_PATH)
    regenerate = f"run `{dashboard.COMMAND}` (or `make pictures`) and commit docs/dashboard.png"
    assert dashboard.HASH_KEY in meta, f"docs/dashboard.png has no dashboard hash: {regenerate}"
    assert meta[dashboard.HASH_KEY] == dashboard.dashboard_hash(), (
        f"deploy/grafana/evbridge.json changed since docs/dashboard.png was drawn: {regenerate}"
    )


def test_the_docs_show_the_dashboard_picture() -> None:
    assert "docs/dashboard.png" in (ROOT / "README.md").read_text()
    assert "(dashboard.png)" in (ROOT / "docs" / "deploy.md").read_text()


def test_every_dashboard_query_is_one_the_picture_can_evaluate() -> None:
    """A panel using PromQL that tests/docs/promql.py lacks fails here, not in the picture."""
    board = json.loads(dashboard.DASHBOARD.read_text())
    empty = [Scrape(0.0, {}), Scrape(1.0, {})]
    exprs = dashboard.panel_exprs(board)
    assert len(exprs) >= 20
    for expr in exprs:
        assert "$" not in dashboard.expand(expr), expr
        dashboard.series(expr, empty)  # raises Unsupported for what it cannot evaluate
