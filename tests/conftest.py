"""Shared fixtures. Real-broker fixtures live in tests/brokers.py (a plugin)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bridge.handlers import HandlerRegistry

pytest_plugins = ["tests.brokers"]


@pytest.fixture
def registry() -> Iterator[HandlerRegistry]:
    """An isolated handler registry, so tests never see each other's ``@on`` handlers."""
    yield HandlerRegistry()
