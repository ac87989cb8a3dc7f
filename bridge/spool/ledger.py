"""The loop's account of the spool: segments, records and bytes per sink, disk use.

Only the event loop changes it, from what the writer thread reports; cursors read
`Ledger.segments`. Bounded: `reserve` refuses what would take the files past
``max_bytes``, so nothing already accepted is ever dropped to make room.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from bridge.errors import SpoolFull
from bridge.spool.layout import SinkBacklog
from bridge.spool.records import Segment, SpoolStatus, backlog_of
from bridge.spool.recovery import Recovered
from bridge.spool.writer import Written


class Ledger:
    """Segments, backlogs per sink and bytes used, as the loop knows them."""

    def __init__(self, pending_dir: Path, max_bytes: int) -> None:
        self._pending_dir = pending_dir
        self.max_bytes = max_bytes
        #: Pending segments by ascending id.
        self.segments: dict[int, Segment] = {}
        self.pending: dict[str, SinkBacklog] = {}
        self.dead: dict[str, SinkBacklog] = {}
        self.used = 0  # bytes in files
        self.reserved = 0  # bytes accepted for the next write
        #: True after an append was refused, until space comes back.
        self.refused = False

    def take_over(self, found: Recovered) -> None:
        """Start from what recovery found on disk."""
        self.segments.update(found.segments)
        self.pending.update(found.pending)
        self.dead.update(found.dead)
        self.used += found.used

    def reserve(self, size: int) -> None:
        """Hold ``size`` bytes for the next write, or raise `SpoolFull` (nothing held)."""
        if self.used + self.reserved + size > self.max_bytes:
            self.refused = True
            raise SpoolFull(
                f"the spool is full ({self.used + self.reserved} of {self.max_bytes} bytes "
                f"used; {size} more needed): retry later"
            )
        self.reserved += size
        self.refused = False

    def add_written(self, written: Written, sinks: list[str], *, dead: bool) -> None:
        """Count records the writer wrote to the pending area (or, ``dead``, the dead one)."""
        table = self.dead if dead else self.pending
        for segment_id, size in written.sizes.items():
            if not dead:
                segment = self.segments.get(segment_id)
                if segment is None:
                    segment = self.segments[segment_id] = Segment(
                        segment_id, self._pending_dir / written.names[segment_id]
                    )  # a new segment: records start after its header
                self.used += size - segment.size
                segment.size = size
            else:
                self.used += size - written.starts[segment_id]
        for (segment_id, _, size), sink in zip(written.positions, sinks, strict=True):
            backlog = backlog_of(table, sink)
            backlog.events += 1
            backlog.bytes += size
            if not dead:
                segment = self.segments[segment_id]
                segment.records += 1
                segment.unacked += 1

    def acks_written(self, ack_bytes: dict[int, int]) -> None:
        for segment_id, written in ack_bytes.items():
            segment = self.segments.get(segment_id)
            if segment is not None:
                segment.ack_bytes += written
            self.used += written

    def deleted(self, segment_ids: Iterable[int]) -> None:
        for segment_id in segment_ids:
            segment = self.segments.pop(segment_id, None)
            if segment is not None:
                self.used -= segment.size + segment.ack_bytes
                self.refused = False

    def dead_dropped(self, dropped: Iterable[tuple[str, int]], old: int, new: int) -> None:
        """Dead letters ``(sink, size)`` left the dead-letter area; its file went from
        ``old`` to ``new`` bytes."""
        self.used += new - old
        for sink, size in dropped:
            backlog = backlog_of(self.dead, sink)
            backlog.events -= 1
            backlog.bytes -= size

    def sinks(self) -> list[str]:
        """Every sink with records pending (including ones the config may no longer have)."""
        return [sink for sink, backlog in self.pending.items() if backlog.events > 0]

    def status(self) -> SpoolStatus:
        return SpoolStatus(
            pending={k: SinkBacklog(v.events, v.bytes) for k, v in self.pending.items()},
            dead={k: SinkBacklog(v.events, v.bytes) for k, v in self.dead.items()},
            disk_bytes=self.used,
            max_bytes=self.max_bytes,
            full=self.refused,
        )

    def pending_events(self) -> int:
        return sum(b.events for b in self.pending.values())
