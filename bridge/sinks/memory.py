"""An in-memory sink for tests and embedding: keeps what it was given, in order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from bridge.errors import SinkError
from bridge.results import Delivery
from bridge.sinks.base import Health, Outgoing, RouteOptions, SinkConfig, SinkType


class MemoryConfig(SinkConfig, frozen=True, kw_only=True):
    """``type: memory``. ``max_events`` bounds what is kept (oldest dropped first)."""

    max_events: int = 100_000

    field_docs: ClassVar[Mapping[str, str]] = {
        "max_events": "Events kept (the oldest are dropped first).",
    }


class MemoryRoute(RouteOptions, frozen=True, kw_only=True):
    """``topic`` is only a label here: it shows up as the delivery's destination."""

    topic: str | None = None

    field_docs: ClassVar[Mapping[str, str]] = {
        "topic": "A label only: shown as the delivery's destination.",
    }

    def destination(self, sink: str) -> str:
        return self.topic or sink


class MemorySink:
    """Confirms every event at once; ``items`` holds what was published, offsets count up."""

    def __init__(self, config: MemoryConfig) -> None:
        self.name = config.name
        self._max = config.max_events
        self.items: list[Outgoing] = []
        self._offset = 0
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def publish_many(self, items: Sequence[Outgoing]) -> list[Delivery | SinkError]:
        out: list[Delivery | SinkError] = []
        name = self.name
        offset = self._offset
        for item in items:
            out.append(Delivery(name, item.options.destination(name), 0, offset))
            offset += 1
        self._offset = offset
        self.items.extend(items)
        if len(self.items) > self._max:
            del self.items[: len(self.items) - self._max]
        return out

    @property
    def events(self) -> list[object]:
        """The published events, in publish order."""
        return [item.event for item in self.items]

    async def healthcheck(self) -> Health:
        return Health(ok=self.started, detail="" if self.started else "not started")

    async def stop(self) -> None:
        self.started = False


def _make(config: SinkConfig) -> MemorySink:
    assert isinstance(config, MemoryConfig)
    return MemorySink(config)


SINK_TYPE = SinkType("memory", MemoryConfig, MemoryRoute, _make, coalesce=False)
