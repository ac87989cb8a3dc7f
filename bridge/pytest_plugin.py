"""The pytest plugin of `bridge.testing`: the ``evbridge_bus`` fixture.

Registered through the ``pytest11`` entry point ``evbridge``, so installing evbridge
makes the fixture available; it needs pytest-asyncio.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from bridge.testing import TestBus


@pytest_asyncio.fixture
async def evbridge_bus() -> AsyncIterator[TestBus]:
    """A started `TestBus` running the ``@on`` handlers, stopped after the test."""
    async with TestBus() as bus:
        yield bus
