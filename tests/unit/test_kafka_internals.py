"""The aiokafka internals the Kafka sink relies on are still where it expects them.

bridge/sinks/kafka/_aiokafka.py is the one module that uses them; pyproject.toml
bounds aiokafka below the next minor version. When an upgrade moves something,
this test names it, before a broker test fails in a less obvious way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import aiokafka  # type: ignore[import-untyped]

from bridge.sinks.kafka import _aiokafka

PACKAGE = Path(_aiokafka.__file__).parent


def test_the_internals_the_sink_uses_are_there() -> None:
    problems = _aiokafka.missing_internals()
    assert not problems, (
        f"aiokafka {aiokafka.__version__} moved internals that bridge/sinks/kafka/_aiokafka.py "
        f"uses: {'; '.join(problems)}. Adapt that module, then raise the bound in pyproject.toml."
    )


def test_the_check_notices_a_missing_internal(monkeypatch: object) -> None:
    import pytest

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    monkeypatch.delattr(_aiokafka.Sender, "sender_task")
    assert any("sender_task" in p for p in _aiokafka.missing_internals())


def test_only_the_internals_module_reaches_into_aiokafka() -> None:
    """Other modules of the package import only aiokafka.errors (public), and touch no
    private attribute of an aiokafka object."""
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "_aiokafka.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aiokafka"):
                imported = (node.module, [a.name for a in node.names])
                assert imported == ("aiokafka", ["errors"]), (
                    f"{path.name} imports {node.module}: aiokafka internals go in _aiokafka.py"
                )
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("aiokafka") for a in node.names), path.name
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("_sender", "client", "hosts", "cluster"), (
                    f"{path.name}:{node.lineno} uses .{node.attr}: go through _aiokafka.py"
                )
