"""The Makefile's targets: a fast one exists, and the README says what each one needs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAKEFILE = (ROOT / "Makefile").read_text()
README = (ROOT / "README.md").read_text()


def _phony() -> set[str]:
    found = re.search(r"^\.PHONY:(.*)$", MAKEFILE, re.MULTILINE)
    assert found, "the Makefile declares no .PHONY targets"
    return set(found.group(1).split())


def _recipe(target: str) -> str:
    found = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", MAKEFILE, re.MULTILINE)
    assert found, f"no recipe for {target!r} in the Makefile"
    return found.group(1)


def _readme_targets() -> dict[str, list[str]]:
    """The README's make-target table: target -> its cells."""
    marker = README.index("<!-- make-targets:")
    rows = {}
    for line in README[marker:].splitlines()[1:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        found = re.fullmatch(r"`make (\S+)`", cells[0])
        if found:
            rows[found.group(1)] = cells[1:]
    return rows


def test_test_fast_runs_the_unit_and_contract_tests_and_nothing_slower() -> None:
    recipe = _recipe("test-fast")
    assert "tests/unit" in recipe
    assert "tests/contract" in recipe
    assert "tests/integration" not in recipe
    assert "test-fast" in _phony()


def test_the_readme_says_what_every_make_target_runs_and_needs() -> None:
    rows, phony = _readme_targets(), _phony()
    assert set(rows) == phony, (
        "the README's make-target table (after <!-- make-targets: -->) must have one row per "
        f".PHONY target: missing {sorted(phony - set(rows))}, extra {sorted(set(rows) - phony)}"
    )
    for target, cells in rows.items():
        assert all(cells), f"make {target}: every column is filled in (got {cells})"
