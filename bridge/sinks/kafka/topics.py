"""Which partitions a topic has: from the producer's metadata cache, or asked for once.

With ``auto_create_topics: false`` a topic the cache does not know is looked up
with a metadata request that cannot create it, so a missing topic fails its
events with ``unknown_topic`` instead of being created by the broker.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from bridge.errors import SinkError, SinkRejected
from bridge.sinks.kafka import _aiokafka as aio
from bridge.sinks.kafka.config import CACHE_LIMIT, valid_topic
from bridge.sinks.kafka.errors import classify


class Topics:
    """Partition lookups of one sink, with the names it already checked (bounded)."""

    def __init__(self, auto_create: bool) -> None:
        self.auto_create = auto_create
        self._valid: set[str] = set()

    def known(self, producer: Any, topic: str) -> list[int] | None:
        """The topic's partition ids when the producer's metadata has them (no I/O)."""
        if topic not in self._valid:
            return None
        found = aio.partitions_known(producer, topic)
        return sorted(found) if found else None

    async def lookup(self, producer: Any, topic: str, deadline: float) -> list[int] | SinkError:
        """The topic's partition ids, from cached metadata or asked for once (until
        ``deadline``, loop time); the per-event error when there are none."""
        if topic not in self._valid:
            if not valid_topic(topic):
                return SinkRejected(
                    f"{topic!r} is not a valid Kafka topic name (1-249 of [A-Za-z0-9._-])",
                    code="invalid_topic",
                    field="topic",
                )
            if len(self._valid) >= CACHE_LIMIT:
                self._valid.clear()
            self._valid.add(topic)
        found = aio.partitions_known(producer, topic)
        if found:
            return sorted(found)
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.001)
        try:
            async with asyncio.timeout(remaining):
                if not self.auto_create:
                    missing = await aio.missing_topic(producer, topic)
                    if missing is not None:
                        return classify(missing, topic)
                found = await producer.partitions_for(topic)
        except Exception as exc:
            return classify(exc, topic)
        return sorted(found)


def keyless_partition(producer: Any, topic: str, parts: list[int]) -> int:
    """Keyless events of one call stick to one partition (with a leader), so they share a batch."""
    available = aio.partitions_available(producer, topic)
    choice: int = random.choice(sorted(available)) if available else random.choice(parts)
    return choice
