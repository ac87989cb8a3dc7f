"""Reading a spool directory without owning it: ``evbridge spool status`` / ``verify``.

Everything here is read-only and safe while the bridge runs: records being
written are past the end a reader sees, or show up as an incomplete tail of
the newest segment, which is reported as such.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bridge.errors import SpoolError
from bridge.spool import codec
from bridge.spool.framing import Damage, scan_segment
from bridge.spool.layout import (
    DEAD,
    LOCK,
    PENDING,
    SinkBacklog,
    iter_surveys,
    open_regular,
    segment_ids,
    segment_name,
)


def spool_exists(directory: str | os.PathLike[str]) -> bool:
    """True when ``directory`` holds a spool (one that `Spool.open` made)."""
    return (Path(directory) / PENDING).is_dir()


def owner_pid(directory: Path) -> int | None:
    """The pid of the process that holds the spool, or None if none does."""
    try:
        fd = os.open(directory / LOCK, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not hang
    except FileNotFoundError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SpoolError(
                f"spool entry {str(directory / LOCK)!r} is not a regular file; "
                "move it out of the spool directory",
                code="spool_hostile_entry",
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@dataclass
class Problem:
    """Damage found in one file."""

    path: Path
    damage: Damage
    #: The newest segment's tail while the bridge runs: most likely a write in progress.
    in_progress: bool = False

    def describe(self) -> str:
        size = self.damage.end - self.damage.start
        what = "incomplete tail (a write in progress?)" if self.in_progress else "damaged"
        if not self.in_progress and self.damage.at_eof:
            what = "torn or corrupt tail"
        return f"{self.path}: {what}: {size} bytes at offset {self.damage.start}"


@dataclass
class Inspection:
    """A spool directory as found on disk."""

    directory: Path
    exists: bool
    owner: int | None = None
    pending: dict[str, SinkBacklog] = field(default_factory=dict)
    dead: dict[str, SinkBacklog] = field(default_factory=dict)
    segments: int = 0
    dead_segments: int = 0
    records: int = 0
    disk_bytes: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no file holds damage (a write in progress does not count)."""
        return all(p.in_progress for p in self.problems)

    def to_dict(self) -> dict[str, object]:
        now = time.time_ns()

        def sinks(table: dict[str, SinkBacklog]) -> dict[str, object]:
            return {
                sink: {
                    "events": b.events,
                    "bytes": b.bytes,
                    "oldest_age_s": round((now - b.oldest_ns) / 1e9, 3) if b.oldest_ns else None,
                }
                for sink, b in sorted(table.items())
                if b.events
            }

        return {
            "directory": str(self.directory),
            "exists": self.exists,
            "running_pid": self.owner,
            "pending": sinks(self.pending),
            "dead_letters": sinks(self.dead),
            "segments": self.segments,
            "dead_segments": self.dead_segments,
            "records_checked": self.records,
            "disk_bytes": self.disk_bytes,
            "ok": self.ok,
            "problems": [p.describe() for p in self.problems],
        }


def _merge(into: dict[str, SinkBacklog], found: dict[str, SinkBacklog]) -> None:
    for sink, backlog in found.items():
        mine = into.setdefault(sink, SinkBacklog())
        mine.events += backlog.events
        mine.bytes += backlog.bytes
        if backlog.oldest_ns and (mine.oldest_ns is None or backlog.oldest_ns < mine.oldest_ns):
            mine.oldest_ns = backlog.oldest_ns


def inspect(directory: str | os.PathLike[str]) -> Inspection:
    """Read every file of the spool at ``directory`` (streaming) and verify its checksums.

    Raises `SpoolError` (naming the path) for an entry that is not a spool file
    and `OSError` for a directory it cannot read.
    """
    root = Path(directory)
    found = Inspection(root, exists=spool_exists(root))
    if not found.exists:
        return found
    found.owner = owner_pid(root)
    for area, with_acks in ((PENDING, True), (DEAD, False)):
        newest = max(segment_ids(root / area), default=None)
        for survey in iter_surveys(root / area, codec.head, with_acks=with_acks):
            found.records += survey.records
            found.disk_bytes += survey.file_bytes + survey.ack_bytes
            if with_acks:
                found.segments += 1
                _merge(found.pending, survey.pending)
            else:
                found.dead_segments += 1
                _merge(found.dead, survey.pending)
            for damage in survey.damage:
                in_progress = (
                    found.owner is not None and damage.at_eof and survey.segment_id == newest
                )
                found.problems.append(Problem(survey.path, damage, in_progress))
            found.problems.extend(
                Problem(survey.path.with_suffix(".ack"), d) for d in survey.ack_damage
            )
    return found


def dead_letters(
    directory: str | os.PathLike[str], sink: str | None = None
) -> Iterator[codec.DeadLetterView]:
    """The dead letters of the spool at ``directory`` (of ``sink``, or all), oldest first."""
    dead = Path(directory) / DEAD
    for segment_id in segment_ids(dead):
        with (
            contextlib.suppress(FileNotFoundError),
            open_regular(dead / segment_name(segment_id)) as file,
        ):
            for record in scan_segment(file):
                if isinstance(record, Damage):
                    continue
                try:
                    view = codec.view_dead_letter(record.payload)
                except Exception:  # a record this version cannot read: skip, verify reports
                    continue
                if sink is None or view.sink == sink:
                    yield view
