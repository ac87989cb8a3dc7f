"""The dead-letter area's file work for replay: pick records, then drop the replayed ones.

Both run in the spool's writer thread; `bridge.spool.store.Spool.replay_dead_letters`
appends the picked records to the pending area (fsync'd) before it drops them here, so
a crash in between replays a record twice, never zero times.
"""

from __future__ import annotations

import os
from pathlib import Path

from bridge.spool.framing import Damage, Keyed, scan_segment
from bridge.spool.layout import Head, open_regular, safe_head, segment_name
from bridge.spool.writer import AreaWriter, fsync_dir

#: ``(offset, size, sink, payload)`` of one dead letter.
Picked = tuple[int, int, str, bytes]


def pick_dead(
    dead_dir: Path, writer: AreaWriter, head: Head, segment_id: int, sink: str | None
) -> list[Picked]:
    """The dead letters of one segment to replay (``sink``'s, or all)."""
    if writer.segment_id == segment_id:
        writer.close()  # the next dead letter starts a new segment
    path = dead_dir / segment_name(segment_id)
    picked: list[Picked] = []
    try:
        file = open_regular(path)
    except FileNotFoundError:
        return picked
    with file:
        for record in scan_segment(file):
            if isinstance(record, Damage):
                continue
            record_sink = safe_head(head, record.payload)[0]
            if sink is None or record_sink == sink:
                size = record.end - record.offset
                picked.append((record.offset, size, record_sink, record.payload))
    return picked


def drop_dead(dead_dir: Path, segment_id: int, offsets: set[int]) -> tuple[int, int]:
    """Rewrite a dead segment without ``offsets``; (old size, new size)."""
    path = dead_dir / segment_name(segment_id)
    old = path.stat().st_size
    temp = path.with_suffix(".tmp")
    kept = 0
    keyed = Keyed.new()
    with open_regular(path) as source, temp.open("wb") as target:
        target.write(keyed.header())
        for record in scan_segment(source):
            if isinstance(record, Damage) or record.offset in offsets:
                continue
            framed = keyed.frame(record.payload, kept)
            target.write(framed)
            kept += 1
        size = target.tell()
        target.flush()
        os.fsync(target.fileno())
    if kept:
        os.replace(temp, path)
    else:
        size = 0
        temp.unlink()
        path.unlink()
    fsync_dir(dead_dir)
    return old, size
