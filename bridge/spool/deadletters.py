"""Replaying dead letters: pick them, append them to pending, drop them from the area.

`replay` appends the picked records (fsync'd) before it drops them from the dead-letter
area, so a crash in between replays a record twice, never zero times. The file work
(`pick_dead`, `drop_dead`) runs in the spool's writer thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path

from bridge.spool.framing import Damage, Keyed, scan_segment
from bridge.spool.layout import Head, open_regular, safe_head, segment_ids, segment_name
from bridge.spool.ledger import Ledger
from bridge.spool.writer import AreaWriter, fsync_dir

log = logging.getLogger("bridge.spool")

#: ``(offset, size, sink, payload)`` of one dead letter.
Picked = tuple[int, int, str, bytes]
#: Dead letters appended per spool write.
CHUNK = 1000


async def replay(
    dead_dir: Path,
    writer: AreaWriter,
    head: Head,
    *,
    executor: Executor,
    append: Callable[[Sequence[str], Sequence[bytes]], Awaitable[None]],
    ledger: Ledger,
    revive: Callable[[bytes], bytes],
    sink: str | None,
) -> int:
    """Move dead letters (of ``sink``, or all) back to pending with ``append``; how many.

    ``executor`` is the writer thread; ``ledger`` learns what left the area.
    """
    loop = asyncio.get_running_loop()
    moved = 0
    for segment_id in await loop.run_in_executor(executor, segment_ids, dead_dir):
        picked = await loop.run_in_executor(
            executor, pick_dead, dead_dir, writer, head, segment_id, sink
        )
        if not picked:
            continue
        done: set[int] = set()
        try:
            for start in range(0, len(picked), CHUNK):
                chunk = picked[start : start + CHUNK]
                payloads = [revive(payload) for _, _, _, payload in chunk]
                await append([s for _, _, s, _ in chunk], payloads)
                done.update(offset for offset, _, _, _ in chunk)
        finally:
            if done:
                old, new = await loop.run_in_executor(
                    executor, drop_dead, dead_dir, segment_id, done
                )
                ledger.dead_dropped(
                    ((s, size) for offset, size, s, _ in picked if offset in done), old, new
                )
                moved += len(done)
    if moved:
        log.info("spool: %d dead letters replayed (sink: %s)", moved, sink or "all")
    return moved


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
