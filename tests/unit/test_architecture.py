"""The package's shape, read from the source: no import cycles, and the one-way layering.

The import graph is built with `ast` from every module under ``bridge/`` (nothing is
imported). An edge ``a -> b`` is any ``import b`` / ``from b import x`` / relative import
in ``a`` that names a module of ``bridge``; ``from pkg import name`` is an edge to
``pkg.name`` when that is a module, else to ``pkg``.

What counts:
- Imports inside functions count like module-level ones: deferring an import does not
  remove the dependency, and it is the usual way a cycle gets hidden.
- Imports under ``if TYPE_CHECKING:`` never run, so they cannot make an import fail;
  `test_no_import_cycles_at_runtime` leaves them out. They still are a dependency of the
  design (a back-reference that only type hints mention is still a back-reference), so
  the cycle and layering tests count them too.
- A submodule import does not add an edge to its parent packages, although Python runs
  their ``__init__`` first: a package re-exporting its own submodules is not a cycle.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "bridge"
PAGE = ROOT.parent / "docs" / "architecture.md"

#: Edges allowed for now although they close a cycle or point up the layers; each names
#: the work that removes it. The test fails once an edge here is gone, so the entry goes too.
KNOWN_BACK_EDGES: dict[tuple[str, str], str] = {}

#: The one-way flow, drivers first: ingest (server) -> bus -> pipeline (handlers) ->
#: dispatch -> storage -> router -> sink, over the event model. A module may import its
#: own layer and the layers after it, never one before it. The bus's layer holds the
#: event path and what it hands events to after their handlers: the subscriptions (which
#: match types with the router's globs). Dispatch (sync and durable delivery: the
#: deliverer, its lanes, retries and dead letters) drives storage, which sits under it and
#: over the router (a spooled record's destination is resolved again when it is read back).
#: Modules not listed (config, errors, metrics, tracing and spans, ...) are not layered.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("cli", ("bridge.cli",)),
    ("server", ("bridge.server",)),
    ("testing", ("bridge.testing", "bridge.pytest_plugin")),
    ("sources", ("bridge.sources",)),
    (
        "bus",
        (
            "bridge.bus",
            "bridge.businfo",
            "bridge.spoolview",
            "bridge.sends",
            "bridge.sinkset",
            "bridge.eventpath",
            "bridge.subscriptions",
            "bridge.hub",
        ),
    ),
    (
        "pipeline",
        (
            "bridge.pipeline",
            "bridge.handlers",
            "bridge.context",
            "bridge.signature",
            "bridge.inject",
            "bridge.policy",
            "bridge.middleware",
            "bridge.typed",
            "bridge.resources",
            "bridge.classes",
            "bridge.threads",
            "bridge.loopwatch",
            "bridge.cancelguard",
            "bridge.webhooks",
        ),
    ),
    (
        "dispatch",
        (
            "bridge.dispatch",
            "bridge.delivery",
            "bridge.durable",
            "bridge.deliverer",
            "bridge.lane",
            "bridge.retry",
            "bridge.deadletter",
        ),
    ),
    ("storage", ("bridge.spool",)),
    ("router", ("bridge.routing",)),
    ("sinks", ("bridge.sinks",)),
    ("event", ("bridge.event",)),
]


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    typing_only: bool


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _known(name: str) -> str | None:
    """The longest prefix of ``name`` that is a module of bridge."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports_of(module: str, path: Path) -> Iterable[Import]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def walk(node: ast.AST, typing_only: bool) -> Iterable[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk_one(stmt, True)
                for stmt in child.orelse:
                    yield from walk_one(stmt, typing_only)
            else:
                yield from walk_one(child, typing_only)

    def walk_one(node: ast.AST, typing_only: bool) -> Iterable[Import]:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            targets = [
                f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in MODULES else origin
                for alias in node.names
            ]
        else:
            yield from walk(node, typing_only)
            return
        for target in targets:
            known = _known(target) if target.split(".")[0] == "bridge" else None
            if known is not None and known != module:
                yield Import(module, known, node.lineno, typing_only)

    yield from walk(ast.parse(path.read_text(), str(path)), False)


IMPORTS = [imp for module, path in MODULES.items() for imp in _imports_of(module, path)]


def _graph(*, typing: bool, skip_known: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in IMPORTS:
        if imp.typing_only and not typing:
            continue
        if skip_known and (imp.source, imp.target) in KNOWN_BACK_EDGES:
            continue
        graph[imp.source].add(imp.target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component with more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan; the graph is small enough to recurse
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_a_cycle(graph, component) for component in components]


def _a_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's smallest member, first node repeated last."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph[node] & component):
                if succ == start:
                    return [*paths[node], start]
                if succ not in paths:
                    paths[succ] = [*paths[node], succ]
                    following.append(succ)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a component always has one


def _where(source: str, target: str) -> str:
    lines = sorted(
        {imp for imp in IMPORTS if imp.source == source and imp.target == target},
        key=lambda imp: imp.line,
    )
    path = MODULES[source].relative_to(ROOT.parent)
    return ", ".join(
        f"{path}:{imp.line}{' (TYPE_CHECKING)' if imp.typing_only else ''}" for imp in lines
    )


def _describe(cycles: list[list[str]]) -> str:
    return "\n".join(
        " -> ".join(cycle)
        + "\n"
        + "\n".join(f"    {a} -> {b}: {_where(a, b)}" for a, b in itertools.pairwise(cycle))
        for cycle in cycles
    )


def _component(module: str) -> str:
    """The subpackage of bridge a module belongs to (``bridge.spool``), or the module."""
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (ROOT / parts[1]).is_dir()):
        return ".".join(parts[:2])
    return module


def _layer(module: str) -> int | None:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def test_the_graph_sees_the_package() -> None:
    """Guard against a graph that passes because it found nothing."""
    assert {"bridge", "bridge.bus", "bridge.spool.store", "bridge.cli"} <= set(MODULES)
    edges = {(imp.source, imp.target) for imp in IMPORTS}
    assert ("bridge.bus", "bridge.pipeline") in edges
    assert ("bridge.spool", "bridge.spool.store") in edges  # package re-export
    assert ("bridge.spool.inspect", "bridge.spool.codec") in edges  # from pkg import module
    assert any(imp.typing_only for imp in IMPORTS)


def test_cycles_are_found_and_named() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_at_runtime() -> None:
    """What Python executes (TYPE_CHECKING blocks left out) has no cycle, with no exceptions."""
    cycles = _cycles(_graph(typing=False, skip_known=False))
    assert not cycles, "import cycles in bridge/:\n" + _describe(cycles)


def test_no_import_cycles_counting_type_only_imports() -> None:
    cycles = _cycles(_graph(typing=True, skip_known=True))
    assert not cycles, "import cycles in bridge/ (type-only imports included):\n" + _describe(
        cycles
    )


def test_no_cycles_between_subpackages() -> None:
    """Collapsed to subpackages (bridge.spool, bridge.server, ...) the graph has no cycle
    either: e.g. the spool must not import the server while the server imports the spool."""
    graph: dict[str, set[str]] = {}
    for source, targets in _graph(typing=True, skip_known=True).items():
        mine = graph.setdefault(_component(source), set())
        mine.update(_component(t) for t in targets if _component(t) != _component(source))
    for targets in list(graph.values()):
        for target in targets:
            graph.setdefault(target, set())
    cycles = _cycles(graph)
    assert not cycles, "cycles between subpackages of bridge/:\n" + "\n".join(
        " -> ".join(cycle) for cycle in cycles
    )


def test_storage_does_not_import_the_server_or_the_cli() -> None:
    wrong = [
        imp
        for imp in IMPORTS
        if _component(imp.source) == "bridge.spool"
        and _component(imp.target) in {"bridge.server", "bridge.cli"}
    ]
    assert not wrong, "\n".join(
        f"{i.source} -> {i.target}: {_where(i.source, i.target)}" for i in wrong
    )


def test_only_the_cli_imports_the_server_and_nothing_imports_the_cli() -> None:
    wrong = [
        imp
        for imp in IMPORTS
        if (
            _component(imp.target) == "bridge.server"
            and _component(imp.source) not in {"bridge.server", "bridge.cli"}
        )
        or (_component(imp.target) == "bridge.cli" and _component(imp.source) != "bridge.cli")
    ]
    assert not wrong, "\n".join(
        f"{i.source} -> {i.target}: {_where(i.source, i.target)}" for i in wrong
    )


def test_the_flow_only_imports_downstream() -> None:
    """No module imports a layer before its own in `LAYERS` (the sink knows nothing of the
    router, the router nothing of the pipeline, the pipeline nothing of the bus, ...)."""
    wrong = []
    for imp in IMPORTS:
        if (imp.source, imp.target) in KNOWN_BACK_EDGES:
            continue
        source, target = _layer(imp.source), _layer(imp.target)
        if source is not None and target is not None and target < source:
            wrong.append(
                f"{imp.source} ({LAYERS[source][0]}) -> {imp.target} ({LAYERS[target][0]}): "
                f"{_where(imp.source, imp.target)}"
            )
    assert not wrong, "imports against the one-way flow:\n" + "\n".join(sorted(set(wrong)))


def test_the_architecture_page_draws_the_layers_in_order() -> None:
    """docs/architecture.md's picture has one row per layer of `LAYERS`, in its order."""
    picture = PAGE.read_text().split("```")[1]
    rows = re.findall(r"^ ([a-z]+) {2,}\S", picture, flags=re.MULTILINE)
    assert rows[0] == "layer"  # the header
    assert rows[1:] == [name for name, _ in LAYERS]


def test_known_back_edges_still_exist() -> None:
    """An exception that no longer applies is removed, so it cannot hide a new cycle."""
    edges = {(imp.source, imp.target) for imp in IMPORTS}
    stale = [
        f"{a} -> {b} ({why})" for (a, b), why in KNOWN_BACK_EDGES.items() if (a, b) not in edges
    ]
    assert not stale, "remove from KNOWN_BACK_EDGES (the import is gone): " + "; ".join(stale)
