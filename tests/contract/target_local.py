"""Contract targets for the sinks that need no broker: memory and file."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from bridge.event import data_bytes
from bridge.sinks.base import RouteOptions
from bridge.sinks.file import FileConfig, FileRoute, FileSink
from bridge.sinks.memory import MemoryConfig, MemoryRoute, MemorySink
from tests.brokers import unique_name
from tests.contract.target import Received


class MemoryTarget:
    encodes = False  # keeps event objects as they are: nothing to fail on
    works_stopped = True  # in-process: nothing to lose on stop, it keeps taking events

    def __init__(self) -> None:
        self.sink = MemorySink(MemoryConfig(name="mem", type="memory"))

    def route(self) -> RouteOptions:
        return MemoryRoute(topic=unique_name("contract"))

    async def read(self, route: RouteOptions, n: int, timeout: float = 15.0) -> Sequence[Received]:
        assert isinstance(route, MemoryRoute)
        items = [i for i in self.sink.items if i.options == route]
        return [Received(i.event.id, i.event.type, data_bytes(i.event), i.key) for i in items]


class FileTarget:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sink = FileSink(FileConfig(name="file", type="file", path=str(path)))

    def route(self) -> RouteOptions:
        return FileRoute()

    async def read(self, route: RouteOptions, n: int, timeout: float = 15.0) -> Sequence[Received]:
        out = []
        for line in self.path.read_text().splitlines():
            record = json.loads(line)
            if "data_base64" in record:
                data = base64.b64decode(record["data_base64"])
            else:
                data = json.dumps(
                    record["data"], separators=(",", ":"), ensure_ascii=False
                ).encode()
            out.append(Received(record["id"], record["type"], data, record.get("key")))
        return out


@pytest.fixture
async def target_memory() -> AsyncIterator[MemoryTarget]:
    target = MemoryTarget()
    await target.sink.start()
    yield target
    await target.sink.stop()


@pytest.fixture
async def target_file(tmp_path: Path) -> AsyncIterator[FileTarget]:
    target = FileTarget(tmp_path / "out" / "events.jsonl")
    await target.sink.start()
    yield target
    await target.sink.stop()
