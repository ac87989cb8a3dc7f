"""Shared fixtures. Real-broker fixtures live in tests/brokers.py (a plugin);
tests/machine_watch.py checks the machine's RabbitMQ and NATS were not restarted meanwhile."""

from __future__ import annotations

import pytest

from bridge.handlers import HandlerRegistry

pytest_plugins = ["pytester", "tests.brokers", "tests.machine_watch"]


@pytest.fixture
def registry() -> HandlerRegistry:
    """An isolated handler registry, so tests never see each other's ``@on`` handlers."""
    return HandlerRegistry()
