"""The spool's in-memory tail: the newest records, for cursors that are caught up.

Those cursors take records from here instead of reading them back from the file. The
tail is bounded in records (`TAIL_RECORDS`) and in what its records cost in memory
(``delivery.tail_bytes``, default `TAIL_BYTES`), and trimmed in steps, not per record.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Final

from bridge.spool.records import SpoolItem
from bridge.spool.writer import Written

#: The newest records stay in memory (up to this many, and bytes: ``delivery.tail_bytes``)
#: for cursors that are caught up: they take them from there instead of reading them back.
TAIL_RECORDS: Final = 4096
TAIL_BYTES: Final = 8 * 1024 * 1024
#: What a tail record costs in memory per byte of its payload: the payload plus the
#: event objects it was encoded from, kept alive with it (the soak benchmark measured
#: ~1.7 KB of RSS per record for ~0.5 KB payloads). Charged against `TAIL_BYTES`.
TAIL_COST_PER_BYTE: Final = 3


class Tail:
    """The newest records, contiguous in the log, oldest first (iterable, sized)."""

    def __init__(self, limit: int = TAIL_BYTES) -> None:
        #: The bound on what the records cost (`TAIL_COST_PER_BYTE` per payload byte).
        self.limit = limit
        self._items: list[SpoolItem] = []
        # (segment, offset) -> index in _items, plus _base.
        self._index: dict[tuple[int, int], int] = {}
        self._base = 0  # how many items were dropped from the front of _items
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[SpoolItem]:
        return iter(self._items)

    def add(
        self,
        written: Written,
        sinks: Sequence[str],
        payloads: Sequence[bytes],
        objects: Sequence[object],
    ) -> None:
        """Append what one group commit wrote, then trim to the bounds."""
        tail, index = self._items, self._index
        base = self._base
        for (segment_id, offset, size), sink, payload, obj in zip(
            written.positions, sinks, payloads, objects, strict=True
        ):
            index[(segment_id, offset)] = base + len(tail)
            tail.append(SpoolItem(segment_id, offset, size, sink, 0, payload, obj))
            self._bytes += size * TAIL_COST_PER_BYTE
        limit = self.limit
        if len(tail) > TAIL_RECORDS * 3 // 2 or self._bytes > limit:
            keep_from = max(0, len(tail) - TAIL_RECORDS)  # trim in steps, not per record
            dropped = 0
            for item in tail[:keep_from]:
                del index[(item.segment, item.offset)]
                dropped += item.size * TAIL_COST_PER_BYTE
            while keep_from < len(tail) - 1 and self._bytes - dropped > limit // 2:
                item = tail[keep_from]
                del index[(item.segment, item.offset)]
                dropped += item.size * TAIL_COST_PER_BYTE
                keep_from += 1
            del tail[:keep_from]
            self._base += keep_from
            self._bytes -= dropped

    def take(
        self, segment_id: int, offset: int, sink: str, max_items: int, max_bytes: int = 1 << 62
    ) -> tuple[list[SpoolItem], int] | None:
        """Records of ``sink`` starting at this position (up to ``max_items``, and
        ``max_bytes`` after the first), and the position after the last record looked
        at; None if the tail does not start there."""
        start = self._index.get((segment_id, offset))
        if start is None:
            return None
        tail = self._items
        out: list[SpoolItem] = []
        i = start - self._base
        last: SpoolItem | None = None
        taken = 0
        while i < len(tail) and len(out) < max_items and taken < max_bytes:
            item = tail[i]
            if item.segment != segment_id:
                break  # the cursor moves to the next segment through the usual path
            last = item
            if item.sink == sink:
                out.append(item)
                taken += item.size
            i += 1
        assert last is not None
        return out, last.offset + last.size
