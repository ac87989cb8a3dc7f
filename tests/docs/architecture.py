"""Draw the package's shape from its imports: docs/architecture.dot, rendered to .svg.

    python -m tests.docs.architecture        # or: make pictures

The import graph is the one tests/unit/test_architecture.py checks (built with `ast` from
the source). To stay readable as modules are split, it is drawn per group, not per
module: each layer (``LAYERS`` of that test) is a box; a subpackage (``bridge/spool/``) is
one node, and the top-level modules of a layer are one node listing them. An arrow means
"some module of this node imports some module of that one". The modules beside the flow
(config, errors, metrics, ...) are one node; arrows into it are left out (every layer has
them) and its own imports are dashed.

The SVG carries the SHA-256 of the .dot it was rendered from (an XML comment), so
tests/docs/test_pictures.py can tell a stale rendering from a current one.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

from tests.unit.test_architecture import IMPORTS, LAYERS, MODULES

DOCS = Path(__file__).resolve().parents[2] / "docs"
DOT_PATH = DOCS / "architecture.dot"
SVG_PATH = DOCS / "architecture.svg"
COMMAND = "python -m tests.docs.architecture"
HASH_COMMENT = "<!-- rendered from architecture.dot, sha256 {} -->"

#: Each layer's title in the picture, in the order docs/architecture.md draws them. Which
#: modules a layer holds comes from `LAYERS` of tests/unit/test_architecture.py, the list
#: the layering test enforces; a layer it has and this lacks is drawn with its bare name.
TITLES: dict[str, str] = {
    "api": "the public API (bridge/__init__.py)",
    "cli": "cli",
    "server": "server: ingest and decode",
    "bus": "bus: one orchestration per event",
    "pipeline": "pipeline: handlers, isolated",
    "dispatch": "dispatch: sync, durable, bounded wait",
    "storage": "storage: the spool",
    "router": "router: first matching route",
    "sinks": "sinks: one package per broker",
    "event": "event model",
    "beside": "beside the flow: imported from every layer",
}
BESIDE = "beside"

#: Where docs/architecture.md draws modules that `LAYERS` does not list (yet): the layering
#: test leaves them free, the picture still puts them next to their kin. `LAYERS` wins
#: for a module it lists; names of modules that do not exist are harmless.
DRAWN_IN: dict[str, str] = {
    "bridge.eventpath": "bus",
    "bridge.subscriptions": "bus",
    "bridge.hub": "bus",
    "bridge.threads": "pipeline",
    "bridge.templates": "router",
    "bridge.destinations": "router",
    "bridge.routeconfig": "router",
    **{
        f"bridge.{name}": "dispatch"
        for name in ("dispatch", "delivery", "durable", "deliverer", "lane", "retry", "deadletter")
    },
}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _group(module: str) -> str:
    """The layer a module is drawn in."""
    if module == "bridge":
        return "api"
    for name, prefixes in LAYERS:
        if any(_within(module, p) for p in prefixes):
            return name
    for prefix, name in DRAWN_IN.items():
        if _within(module, prefix):
            return name
    return BESIDE


def _layer_order() -> list[str]:
    known = list(TITLES)
    extra = [name for name, _ in LAYERS if name not in TITLES]
    return [*known[:-1], *extra, BESIDE]


def _is_package(module: str) -> bool:
    path = MODULES.get(module)
    return path is not None and path.name == "__init__.py"


def _node(module: str) -> str:
    """The node a module is drawn as: its subpackage (a broker's package under sinks/), or
    the top-level modules of its layer together."""
    parts = module.split(".")
    if len(parts) > 2 and parts[1] == "sinks" and _is_package(".".join(parts[:3])):
        return f"bridge/sinks/{parts[2]}/"
    if len(parts) >= 2 and _is_package(".".join(parts[:2])):
        return f"bridge/{parts[1]}/"
    return f"{_group(module)} modules"


def _label(node: str, members: list[str]) -> str:
    if node.endswith("/"):
        return node
    if members == ["bridge"]:
        return "__init__"
    names = sorted(m.rpartition(".")[2] for m in members)
    lines, line = [], ""
    for name in names:  # wrap the list of modules at about 40 characters
        if line and len(line) + len(name) > 40:
            lines.append(line.rstrip(", "))
            line = ""
        line += name + ", "
    lines.append(line.rstrip(", "))
    return "\\n".join(lines)


def _ident(node: str) -> str:
    return re.sub(r"\W", "_", node.strip("/"))


def dot_source() -> str:
    """The Graphviz source of the picture, deterministic for a given source tree."""
    members: dict[str, list[str]] = {}
    for module in MODULES:
        members.setdefault(_node(module), []).append(module)
    groups: dict[str, list[str]] = {}
    for node, mods in members.items():
        groups.setdefault(_group(mods[0]), []).append(node)
    edges = sorted(
        {
            (_node(imp.source), _node(imp.target))
            for imp in IMPORTS
            if _node(imp.source) != _node(imp.target) and _group(imp.target) != BESIDE
        }
    )
    beside = f"{BESIDE} modules"
    out = [
        f"// Generated by `{COMMAND}` from the imports of bridge/; do not edit.",
        "digraph evbridge {",
        '  graph [rankdir=TB, fontname="Helvetica", fontsize=11, nodesep=0.25, ranksep=0.35,'
        " newrank=true];",
        '  node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica",'
        " fontsize=10];",
        '  edge [color="#555555", arrowsize=0.6];',
    ]
    for name in _layer_order():
        if name not in groups:
            continue
        title = TITLES.get(name, name)
        fill = "#f3f0e6" if name == BESIDE else "#e8f0fa"
        out.append(f"  subgraph cluster_{name} {{")
        out.append(f'    label="{title}"; style="rounded,filled"; fillcolor="{fill}";')
        out.append('    color="#9aa7b8"; fontsize=10; labeljust=l;')
        for node in sorted(groups[name]):
            out.append(f'    {_ident(node)} [label="{_label(node, members[node])}"];')
        out.append("  }")
    for source, target in edges:
        # What the modules beside the flow import (the config knows the sink registry, ...)
        # is drawn lighter: they are not a step of the flow.
        # Every layer uses the event model, so those arrows are drawn lighter as well.
        if source == beside:
            style = ' [style=dashed, color="#aaaaaa"]'
        elif _group(members[target][0]) == "event":
            style = ' [color="#b8c4d4"]'
        else:
            style = ""
        out.append(f"  {_ident(source)} -> {_ident(target)}{style};")
    if "beside" in groups and "event" in groups:
        # Keep the unconnected box below the flow instead of beside its top.
        below, above = sorted(groups["beside"])[0], sorted(groups["event"])[0]
        out.append(f"  {_ident(above)} -> {_ident(below)} [style=invis];")
    out.append("}")
    return "\n".join(out) + "\n"


def source_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def render_svg(text: str) -> str:
    """Run Graphviz's ``dot`` on ``text``; the SVG with the source's hash after its prolog."""
    svg = subprocess.run(
        ["dot", "-Tsvg"], input=text, capture_output=True, text=True, check=True
    ).stdout
    head, sep, rest = svg.partition("<svg")
    return head + HASH_COMMENT.format(source_hash(text)) + "\n" + sep + rest


def main() -> None:
    text = dot_source()
    DOT_PATH.write_text(text)
    SVG_PATH.write_text(render_svg(text))
    print(f"wrote {DOT_PATH.relative_to(DOCS.parent)} and {SVG_PATH.relative_to(DOCS.parent)}")


if __name__ == "__main__":
    main()
