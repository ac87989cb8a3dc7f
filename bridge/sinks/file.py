"""A JSON Lines file sink: one event per line, fsync'd before it is confirmed.

Each line holds every envelope field; bytes ``data`` is written as
``data_base64``. The delivery's ``offset`` is the line's byte offset in the file.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, ClassVar

import msgspec

from bridge.errors import SinkError, SinkUnavailable, Unencodable
from bridge.event import to_plain
from bridge.results import Delivery
from bridge.sinks.base import Health, Outgoing, RouteOptions, SinkConfig, SinkType

_encoder = msgspec.json.Encoder()


class FileConfig(SinkConfig, frozen=True, kw_only=True):
    """``type: file``. A relative ``path`` is relative to the working directory."""

    path: str

    field_docs: ClassVar[Mapping[str, str]] = {
        "path": "The JSON Lines file events are appended to (created with its directory).",
    }


class FileRoute(RouteOptions, frozen=True, kw_only=True):
    """The file sink has no per-route fields."""


class FileSink:
    """Appends events to one file; concurrent calls are serialized, each ends in one fsync."""

    def __init__(self, config: FileConfig) -> None:
        self.name = config.name
        self.path = Path(config.path).absolute()
        self._file: BinaryIO | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        def open_file() -> BinaryIO:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return open(self.path, "ab")

        self._file = await asyncio.to_thread(open_file)

    def _write(self, payload: bytes) -> int:
        assert self._file is not None
        start = self._file.seek(0, os.SEEK_END)
        self._file.write(payload)
        self._file.flush()
        os.fsync(self._file.fileno())
        return start

    async def publish_many(self, items: Sequence[Outgoing]) -> list[Delivery | SinkError]:
        if self._file is None:
            err = SinkUnavailable(f"file sink {self.name!r} is not started")
            return [err] * len(items)
        lines: list[bytes | SinkError] = []
        for item in items:
            try:
                lines.append(_encoder.encode(to_plain(item.event)) + b"\n")
            except (TypeError, ValueError, OverflowError) as exc:
                # Data a handler built that JSON cannot hold: this event's failure alone.
                lines.append(Unencodable(f"the event's data cannot be encoded: {exc}"))
        written = [line for line in lines if isinstance(line, bytes)]
        async with self._lock:
            try:
                start = await asyncio.to_thread(self._write, b"".join(written))
            except OSError as exc:
                return [SinkUnavailable(f"writing {self.path} failed: {exc}")] * len(items)
        out: list[Delivery | SinkError] = []
        destination = str(self.path)
        for line in lines:
            if isinstance(line, SinkError):
                out.append(line)
                continue
            out.append(Delivery(self.name, destination, None, start))
            start += len(line)
        return out

    async def healthcheck(self) -> Health:
        if self._file is None:
            return Health(ok=False, detail="not started")
        if not os.access(self.path.parent, os.W_OK):
            return Health(ok=False, detail=f"{self.path.parent} is not writable")
        return Health(ok=True, detail=str(self.path))

    async def stop(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            async with self._lock:
                await asyncio.to_thread(file.close)


def _make(config: SinkConfig) -> FileSink:
    assert isinstance(config, FileConfig)
    return FileSink(config)


SINK_TYPE = SinkType("file", FileConfig, FileRoute, _make)
