"""Shared fixtures. Real-broker fixtures live in tests/brokers.py (a plugin)."""

from __future__ import annotations

import pytest

from bridge.handlers import HandlerRegistry

pytest_plugins = ["tests.brokers"]


@pytest.fixture
def registry() -> HandlerRegistry:
    """An isolated handler registry, so tests never see each other's ``@on`` handlers."""
    return HandlerRegistry()
