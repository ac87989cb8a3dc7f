"""What the spool keeps in memory about its records: items read, segments, reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bridge.spool.framing import SEGMENT_HEADER_SIZE
from bridge.spool.layout import SinkBacklog


class SpoolItem:
    """One pending record as a cursor read it. ``size`` counts its header too.

    ``obj`` is what the appender passed along with the payload (the decoded form),
    when the record came from the in-memory tail instead of the file.
    """

    __slots__ = ("accepted_ns", "obj", "offset", "payload", "segment", "sink", "size")

    def __init__(
        self,
        segment: int,
        offset: int,
        size: int,
        sink: str,
        accepted_ns: int,
        payload: bytes,
        obj: object = None,
    ) -> None:
        self.segment = segment
        self.offset = offset
        self.size = size
        self.sink = sink
        self.accepted_ns = accepted_ns
        self.payload = payload
        self.obj = obj

    def __repr__(self) -> str:
        return f"SpoolItem({self.segment}:{self.offset}, sink={self.sink!r})"


@dataclass
class RecoveryReport:
    """What `Spool.open` found on disk."""

    segments: int = 0
    #: Records found pending: each is delivered again, and may have been delivered before.
    recovered: int = 0
    #: Damaged regions skipped or cut (each lost one record or more), and their bytes.
    corrupt: int = 0
    corrupt_bytes: int = 0
    dead_letters: int = 0
    duration_s: float = 0.0


@dataclass
class SpoolStatus:
    """The spool right now: pending and dead records per sink, and disk use."""

    pending: dict[str, SinkBacklog]
    dead: dict[str, SinkBacklog]
    disk_bytes: int
    max_bytes: int
    full: bool

    @property
    def pending_events(self) -> int:
        return sum(b.events for b in self.pending.values())

    @property
    def dead_events(self) -> int:
        return sum(b.events for b in self.dead.values())


@dataclass(eq=False)
class Segment:
    """One pending-area segment as the loop sees it (the files are the writer thread's)."""

    id: int
    path: Path
    size: int = 0  # committed bytes: cursors never read past this
    records: int = 0
    unacked: int = 0
    ack_bytes: int = 0
    sealed: bool = False
    #: Written by an earlier run: its ``.ack`` file must be read before its records.
    preexisting: bool = False
    known_damage: set[int] = field(default_factory=set)
    deleting: bool = False
    #: Where its first record starts (after the segment header; 0 for a legacy segment).
    data_start: int = SEGMENT_HEADER_SIZE


def backlog_of(table: dict[str, SinkBacklog], sink: str) -> SinkBacklog:
    """``table[sink]``, created empty when missing."""
    found = table.get(sink)
    if found is None:
        found = table[sink] = SinkBacklog()
    return found
