"""The spool directory on disk, and read-only surveys of its files.

```
<spool_dir>/
  LOCK                          flock'd by the one process that owns the spool
  pending/0000000000000001.seg  records waiting for delivery, append-only
  pending/0000000000000001.ack  offsets of that segment's delivered records
  dead/0000000000000001.seg     dead letters (same record format)
```

Segments are numbered in the order they were created and never reopened for
writing once a newer one exists (a restart always starts a new one). An
``.ack`` file holds records (magic ``EVA1``) whose payload is a list of
little-endian u32 record offsets. A segment whose records are all
acknowledged is deleted together with its ``.ack`` file.

Names are parsed strictly: an entry ending in ``.seg`` or ``.ack`` must be
ASCII digits and the suffix, and a regular file; anything else there (a
directory, a FIFO, ``²³.seg``) is refused with a `SpoolError` naming it rather
than opened. Files are opened non-blocking and checked with ``fstat`` before
anything reads them, so a FIFO cannot hang a reader.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final, cast

from bridge.errors import SpoolError
from bridge.spool.framing import ACK_MAGIC, Damage, Keyed, Record, read_format, scan, scan_segment

PENDING: Final = "pending"
DEAD: Final = "dead"
LOCK: Final = "LOCK"
SEGMENT_SUFFIX: Final = ".seg"
ACK_SUFFIX: Final = ".ack"

#: ``head(payload) -> (sink, accepted_ns)``: what the spool needs to know of a record.
Head = Callable[[bytes], tuple[str, int]]


def segment_name(segment_id: int) -> str:
    return f"{segment_id:016d}{SEGMENT_SUFFIX}"


def ack_path(segment_path: Path) -> Path:
    return segment_path.with_suffix(ACK_SUFFIX)


_SEGMENT_NAME: Final = re.compile(r"([0-9]{1,19})\.(seg|ack)", re.ASCII)


def _hostile(path: str, what: str) -> SpoolError:
    return SpoolError(
        f"spool entry {path!r} {what}; move it out of the spool directory",
        code="spool_hostile_entry",
    )


def segment_ids(directory: Path) -> list[int]:
    """Ids of the ``NNN.seg`` files in ``directory``, ascending; other files are ignored.

    Raises `SpoolError` naming the entry for anything with a ``.seg`` or ``.ack``
    name that is not strictly digits and the suffix, or is not a regular file.
    """
    ids: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            name = entry.name
            if not name.endswith((SEGMENT_SUFFIX, ACK_SUFFIX)):
                continue
            match = _SEGMENT_NAME.fullmatch(name)
            if match is None:
                raise _hostile(entry.path, "is not named like a spool file (digits, then .seg)")
            try:
                regular = entry.is_file(follow_symlinks=False)
            except OSError as exc:
                raise _hostile(entry.path, f"cannot be examined ({exc.strerror})") from None
            if not regular:
                raise _hostile(entry.path, "is not a regular file")
            if match.group(2) == "seg":
                ids.append(int(match.group(1)))
    return sorted(ids)


def open_regular(path: Path, mode: str = "rb") -> BinaryIO:
    """Open a spool file (``rb`` or ``r+b``) only if it is a regular file.

    Non-blocking and checked with ``fstat`` on the open descriptor, so a FIFO
    or device put in its place is refused at once instead of hanging the reader.
    Raises `FileNotFoundError` when it is gone and `SpoolError` naming it otherwise.
    """
    flags = (os.O_RDWR if "+" in mode else os.O_RDONLY) | os.O_NONBLOCK | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _hostile(str(path), f"cannot be opened ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _hostile(str(path), "is not a regular file")
        os.set_blocking(fd, True)
        return cast(BinaryIO, os.fdopen(fd, mode, buffering=0 if mode == "rb" else -1))
    except BaseException:
        os.close(fd)
        raise


def pack_acks(offsets: list[int]) -> bytes:
    return struct.pack(f"<{len(offsets)}I", *offsets)


def read_acks(path: Path) -> tuple[set[int], list[Damage]]:
    """The acknowledged offsets recorded in an ``.ack`` file (empty if it is missing)."""
    acked: set[int] = set()
    damage: list[Damage] = []
    try:
        file = open_regular(path)
    except FileNotFoundError:
        return acked, damage
    with file:
        for item in scan(file, magic=ACK_MAGIC):
            if isinstance(item, Damage):
                damage.append(item)
            elif len(item.payload) % 4 == 0:
                acked.update(struct.unpack(f"<{len(item.payload) // 4}I", item.payload))
    return acked, damage


def safe_head(head: Head, payload: bytes) -> tuple[str, int]:
    """``head(payload)``, or ``("", 0)`` for a payload it cannot read."""
    try:
        return head(payload)
    except Exception:
        return "", 0


@dataclass
class SinkBacklog:
    """What is pending (or dead) for one sink."""

    events: int = 0
    bytes: int = 0
    oldest_ns: int | None = None

    def add(self, size: int, accepted_ns: int) -> None:
        self.events += 1
        self.bytes += size
        if accepted_ns and (self.oldest_ns is None or accepted_ns < self.oldest_ns):
            self.oldest_ns = accepted_ns


@dataclass
class SegmentSurvey:
    """One segment read end to end: its valid records, what is pending, what is damaged."""

    segment_id: int
    path: Path
    file_bytes: int
    ack_bytes: int = 0
    records: int = 0
    acked: int = 0
    pending: dict[str, SinkBacklog] = field(default_factory=dict)
    damage: list[Damage] = field(default_factory=list)
    ack_damage: list[Damage] = field(default_factory=list)
    #: The segment's keyed framing (None: legacy format, or a damaged header).
    keyed: Keyed | None = None
    #: Where its records start (after the segment header).
    data_start: int = 0

    @property
    def unacked(self) -> int:
        return self.records - self.acked

    @property
    def valid_end(self) -> int:
        """Where the file should end: the start of a damaged tail, else its size."""
        if self.damage and self.damage[-1].at_eof:
            return self.damage[-1].start
        return self.file_bytes


def survey_segment(
    path: Path,
    head: Head,
    *,
    with_acks: bool = True,
    on_record: Callable[[Record], None] | None = None,
) -> SegmentSurvey:
    """Read one segment file, streaming, and tally it (read-only)."""
    acked: set[int] = set()
    survey = SegmentSurvey(segment_id=int(path.stem), path=path, file_bytes=0)
    if with_acks:
        ack_file = ack_path(path)
        acked, survey.ack_damage = read_acks(ack_file)
        with contextlib.suppress(FileNotFoundError):
            survey.ack_bytes = ack_file.stat().st_size
    with open_regular(path) as file:
        survey.file_bytes = os.fstat(file.fileno()).st_size
        fmt = read_format(file)
        if fmt is not None:
            survey.keyed, survey.data_start = fmt
        for item in scan_segment(file, fmt=fmt):
            if isinstance(item, Damage):
                survey.damage.append(item)
                continue
            survey.records += 1
            if item.offset in acked:
                survey.acked += 1
                continue
            sink, accepted_ns = safe_head(head, item.payload)
            backlog = survey.pending.get(sink)
            if backlog is None:
                backlog = survey.pending[sink] = SinkBacklog()
            backlog.add(item.end - item.offset, accepted_ns)
            if on_record is not None:
                on_record(item)
    return survey


def iter_surveys(directory: Path, head: Head, *, with_acks: bool = True) -> Iterator[SegmentSurvey]:
    """Survey every segment of a ``pending`` or ``dead`` directory, oldest first.

    A segment deleted while we look (the owner acknowledged it) is skipped.
    """
    for segment_id in segment_ids(directory):
        with contextlib.suppress(FileNotFoundError):
            yield survey_segment(directory / segment_name(segment_id), head, with_acks=with_acks)
