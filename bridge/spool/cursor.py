"""`Cursor`: one sink's pending records, read in spool order, oldest first.

A cursor takes records from the spool's in-memory tail when it is caught up, and
otherwise reads the segment files in the spool's own reader threads (never the
default executor, which sync handlers share: stuck handlers must not stop delivery).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import BinaryIO, Final, Protocol

from bridge.metrics import METRICS, Metrics
from bridge.spool.framing import Damage, SegmentFormat, read_format, scan_segment
from bridge.spool.layout import Head, ack_path, open_regular, read_acks, safe_head
from bridge.spool.records import Segment, SpoolItem

log = logging.getLogger("bridge.spool")

READ_MAX_BYTES: Final = 4 * 1024 * 1024
READ_CHUNK: Final = 256 * 1024


class Source(Protocol):
    """What a cursor reads of its spool (`bridge.spool.store.Spool`)."""

    head: Head
    sink_prefix: Callable[[str], bytes] | None

    @property
    def segments(self) -> Mapping[int, Segment]:
        """The pending segments by ascending id, with their committed sizes."""

    def from_tail(
        self, segment_id: int, offset: int, sink: str, max_items: int, max_bytes: int
    ) -> tuple[list[SpoolItem], int] | None:
        """`bridge.spool.tail.Tail.take`."""

    def reader_executor(self) -> Executor:
        """The threads cursors read files in."""


class Cursor:
    """Reads one sink's pending records in spool order, oldest first.

    `read` returns what is committed now (possibly nothing); `Spool.wait_committed`
    waits for more. Records acknowledged in an earlier run are skipped.
    """

    def __init__(self, spool: Source, sink: str, *, metrics: Metrics = METRICS) -> None:
        self.spool = spool
        self.sink = sink
        #: Where damage found while reading is counted (its spool's metrics).
        self.metrics = metrics
        self._segment_id = -1
        self._offset = 0
        self._file: BinaryIO | None = None
        self._file_id = -1
        self._fmt: SegmentFormat | None = None
        self._acked: set[int] = set()
        #: True when the last `read` reached the end of what is committed.
        self.at_end = False
        self._prefix = spool.sink_prefix(sink) if spool.sink_prefix is not None else None

    def _current(self) -> Segment | None:
        segments = self.spool.segments
        found = segments.get(self._segment_id)
        if found is not None:
            # Records start after the segment header (where the in-memory tail starts too).
            self._offset = max(self._offset, found.data_start)
            return found
        for segment in segments.values():  # ascending ids
            if segment.id > self._segment_id:
                self._segment_id = segment.id
                self._offset = segment.data_start
                return segment
        return None

    async def read(self, max_items: int = 1000, max_bytes: int = READ_MAX_BYTES) -> list[SpoolItem]:
        """Up to ``max_items`` records, and ``max_bytes`` (record sizes; at least one)."""
        items: list[SpoolItem] = []
        loop = asyncio.get_running_loop()
        self.at_end = False
        taken = 0
        while len(items) < max_items and (taken < max_bytes or not items):
            segment = self._current()
            if segment is None:
                self.at_end = True
                break
            if self._offset < segment.size:
                room = max(1, max_bytes - taken)
                cached = self.spool.from_tail(
                    segment.id, self._offset, self.sink, max_items - len(items), room
                )
                if cached is not None:
                    got, self._offset = cached
                    items.extend(got)
                    taken += sum(item.size for item in got)
                    continue
                # The spool's own reader thread: never the default executor, which
                # sync handlers share (stuck handlers must not stop delivery).
                got, self._offset, damage = await loop.run_in_executor(
                    self.spool.reader_executor(),
                    self._read,
                    segment,
                    self._offset,
                    segment.size,
                    max_items - len(items),
                    room,
                )
                items.extend(got)
                taken += sum(item.size for item in got)
                self._note(segment, damage)
                if self._offset < segment.size:
                    break  # stopped at a limit
                continue
            if not segment.sealed:
                self.at_end = True  # caught up with the writer
                break
            self._segment_id = segment.id + 1
            self._offset = 0
        return items

    def _note(self, segment: Segment, damage: list[Damage]) -> None:
        for region in damage:
            if region.start in segment.known_damage:
                continue
            segment.known_damage.add(region.start)
            self.metrics.spool_corrupt_records.inc()
            log.error(
                "spool segment %s: %d bytes at offset %d went bad after they were written; skipped",
                segment.path,
                region.end - region.start,
                region.start,
            )

    def _read(
        self, segment: Segment, start: int, end: int, max_items: int, max_bytes: int
    ) -> tuple[list[SpoolItem], int, list[Damage]]:
        """Worker thread: records of this sink in ``[start, end)``, up to the limits."""
        if self._file_id != segment.id:
            self.close()
            try:
                self._file = open_regular(segment.path)
            except FileNotFoundError:  # acknowledged and deleted meanwhile
                return [], end, []
            self._fmt = read_format(self._file)
            self._file_id = segment.id
            self._acked = read_acks(ack_path(segment.path))[0] if segment.preexisting else set()
        assert self._file is not None
        items: list[SpoolItem] = []
        damage: list[Damage] = []
        position = start
        taken = 0
        head, sink, acked, prefix = self.spool.head, self.sink, self._acked, self._prefix
        accepted_ns = 0
        chunk = max(1, min(end - start, READ_CHUNK))
        for record in scan_segment(self._file, start, end, chunk=chunk, fmt=self._fmt):
            position = record.end
            if isinstance(record, Damage):
                damage.append(record)
                continue
            if acked and record.offset in acked:
                continue
            if prefix is not None:
                if not record.payload.startswith(prefix):
                    continue
            else:
                record_sink, accepted_ns = safe_head(head, record.payload)
                if record_sink != sink:
                    continue
            size = record.end - record.offset
            items.append(
                SpoolItem(segment.id, record.offset, size, sink, accepted_ns, record.payload)
            )
            taken += size
            if len(items) >= max_items or taken >= max_bytes:
                break
        return items, position, damage

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._file_id = -1
            self._acked = set()
