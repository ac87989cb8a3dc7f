"""Opening a spool directory: the lock, and recovery of what an earlier run left.

Both run in the spool's writer thread (`bridge.spool.store.Spool.open`). Recovery reads
every file once, streaming, cuts a torn or corrupt tail at the last good record (see
`bridge.spool.framing`), pads over damage in the middle so it is reported once, and
removes segments whose records were all acknowledged.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter

from bridge.errors import SpoolError
from bridge.spool.framing import HEADER_SIZE, Damage, Keyed
from bridge.spool.layout import (
    LOCK,
    Head,
    SinkBacklog,
    ack_path,
    iter_surveys,
    open_regular,
    segment_ids,
)
from bridge.spool.records import RecoveryReport, Segment, backlog_of
from bridge.spool.writer import AreaWriter, remove_segment

log = logging.getLogger("bridge.spool")


def lock(directory: Path) -> int:
    """Create ``directory`` if needed and take its lock file; the locked descriptor.

    Raises `SpoolError` (``spool_locked``) while another process holds it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o644)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SpoolError(
            f"spool entry {str(directory / LOCK)!r} is not a regular file; "
            "move it out of the spool directory",
            code="spool_hostile_entry",
        )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise SpoolError(
            f"spool directory {str(directory)!r} is in use by another evbridge "
            f"process (pid {owner})",
            code="spool_locked",
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@dataclass
class Recovered:
    """What recovery found, for the spool to take over."""

    report: RecoveryReport
    pending_writer: AreaWriter
    dead_writer: AreaWriter
    #: Pending segments with records left to deliver, by ascending id.
    segments: dict[int, Segment] = field(default_factory=dict)
    pending: dict[str, SinkBacklog] = field(default_factory=dict)
    dead: dict[str, SinkBacklog] = field(default_factory=dict)
    #: Bytes in files.
    used: int = 0


def recover(
    directory: Path, pending_dir: Path, dead_dir: Path, head: Head, segment_bytes: int
) -> Recovered:
    """Read both areas of a locked spool directory (creating them if needed)."""
    start = perf_counter()
    pending_dir.mkdir(exist_ok=True)
    dead_dir.mkdir(exist_ok=True)
    report = RecoveryReport()
    segments: dict[int, Segment] = {}
    pending: dict[str, SinkBacklog] = {}
    dead: dict[str, SinkBacklog] = {}
    used = 0
    for survey in iter_surveys(pending_dir, head):
        _note_damage(survey.path, survey.damage, report, survey.keyed)
        for damage in survey.ack_damage:
            log.warning(
                "spool acknowledgements %s: %d damaged bytes at offset %d ignored "
                "(those records will be sent again)",
                ack_path(survey.path),
                damage.end - damage.start,
                damage.start,
            )
        if survey.unacked == 0:
            remove_segment(survey.path)
            continue
        segment = Segment(
            survey.segment_id,
            survey.path,
            size=survey.valid_end,
            records=survey.records,
            unacked=survey.unacked,
            ack_bytes=survey.ack_bytes,
            sealed=True,
            preexisting=True,
            known_damage={d.start for d in survey.damage},
            data_start=survey.data_start,
        )
        segments[segment.id] = segment
        used += segment.size + segment.ack_bytes
        report.segments += 1
        report.recovered += survey.unacked
        for sink, found in survey.pending.items():
            mine = backlog_of(pending, sink)
            mine.events += found.events
            mine.bytes += found.bytes
            if found.oldest_ns is not None and (
                mine.oldest_ns is None or found.oldest_ns < mine.oldest_ns
            ):
                mine.oldest_ns = found.oldest_ns
    _remove_orphan_acks(pending_dir)
    for survey in iter_surveys(dead_dir, head, with_acks=False):
        _note_damage(survey.path, survey.damage, report, survey.keyed)
        used += survey.valid_end
        for sink, found in survey.pending.items():
            mine = backlog_of(dead, sink)
            mine.events += found.events
            mine.bytes += found.bytes
            report.dead_letters += found.events
    pending_ids = segment_ids(pending_dir)
    dead_ids = segment_ids(dead_dir)
    pending_writer = AreaWriter(
        pending_dir, (pending_ids[-1] if pending_ids else 0) + 1, segment_bytes
    )
    dead_writer = AreaWriter(dead_dir, (dead_ids[-1] if dead_ids else 0) + 1, segment_bytes)
    report.duration_s = perf_counter() - start
    if report.recovered or report.corrupt or report.dead_letters:
        log.info(
            "spool %s recovered: %d pending records in %d segments, %d damaged regions "
            "(%d bytes) cut, %d dead letters, in %.3fs",
            directory,
            report.recovered,
            report.segments,
            report.corrupt,
            report.corrupt_bytes,
            report.dead_letters,
            report.duration_s,
        )
    return Recovered(report, pending_writer, dead_writer, segments, pending, dead, used)


def _note_damage(
    path: Path, damage: list[Damage], report: RecoveryReport, keyed: Keyed | None
) -> None:
    """Log and count damage found at startup; cut a damaged tail off the file."""
    for region in damage:
        report.corrupt += 1
        report.corrupt_bytes += region.end - region.start
        if region.at_eof:
            with open_regular(path, "r+b") as file:
                file.truncate(region.start)
                os.fsync(file.fileno())
            log.warning(
                "spool segment %s: cut a torn or corrupt tail of %d bytes at offset %d; "
                "the records before it are kept",
                path,
                region.end - region.start,
                region.start,
            )
        else:
            size = region.end - region.start
            # Report it once: pad it over (only format 2 resumes after damage).
            if size >= HEADER_SIZE and keyed is not None and region.next_seq >= 0:
                with open_regular(path, "r+b") as file:
                    file.seek(region.start)
                    file.write(keyed.padding(size, region.next_seq))
                    os.fsync(file.fileno())
            log.warning(
                "spool segment %s: skipped %d damaged bytes at offset %d; "
                "the records around them are kept",
                path,
                size,
                region.start,
            )


def _remove_orphan_acks(pending_dir: Path) -> None:
    for entry in os.scandir(pending_dir):
        name = entry.name
        if name.endswith(".ack") and not os.path.exists(entry.path[:-4] + ".seg"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
