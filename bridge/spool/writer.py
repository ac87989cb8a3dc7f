"""File writes of the spool. Everything here runs in the spool's one writer thread."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bridge.spool.framing import ACK_MAGIC, HEADER_SIZE, Keyed, frame
from bridge.spool.layout import ack_path, pack_acks, segment_name
from bridge.spool.throttle import Throttled

log = logging.getLogger("bridge.spool")
#: While the disk is full every acknowledgement write fails: log that once per interval.
_ack_failures = Throttled(log, logging.WARNING)

_sync = getattr(os, "fdatasync", os.fsync)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (new or removed files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def remove_segment(path: Path) -> None:
    """Delete a segment and its ``.ack`` file (the segment first: an orphan ack is harmless)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with contextlib.suppress(FileNotFoundError):
        ack_path(path).unlink()


@dataclass
class Written:
    """Where one write put its records."""

    #: ``(segment id, offset, framed size)`` per record, in order.
    positions: list[tuple[int, int, int]] = field(default_factory=list)
    #: Segment id → its size after the write / before it / its file name.
    sizes: dict[int, int] = field(default_factory=dict)
    starts: dict[int, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    #: Segments closed for writing by this write (a newer one exists).
    sealed: list[int] = field(default_factory=list)


class WriteFailed(OSError):
    """A write or fsync failed; what it wrote was rolled back and its segment sealed."""

    def __init__(self, cause: OSError, sealed: list[int]) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.sealed = sealed


class AreaWriter:
    """Appends records to the newest segment of one directory, rolling to a new one
    when it reaches ``segment_bytes``. A new writer always starts a new segment."""

    def __init__(self, directory: Path, next_id: int, segment_bytes: int) -> None:
        self.directory = directory
        self.next_id = next_id
        self.segment_bytes = segment_bytes
        self.fd: int | None = None
        self.segment_id = 0
        self.position = 0
        self.keyed = Keyed.new()
        self.seq = 0  # the next record's sequence number in the open segment

    def _open_next(self) -> bytes:
        """Create the next segment; returns its header, to be written with its first records."""
        self.segment_id = self.next_id
        self.next_id += 1
        path = self.directory / segment_name(self.segment_id)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self.position = 0
        self.seq = 0
        self.keyed = Keyed.new()
        return self.keyed.header()

    def write(self, payloads: Sequence[bytes]) -> Written | WriteFailed:
        """Append, fsync, and say where everything went; on failure roll back."""
        out = Written()
        created: list[int] = []
        chunks: list[bytes] = []
        try:
            for payload in payloads:
                size = HEADER_SIZE + len(payload)
                if self.fd is None or (self.seq > 0 and self.position + size > self.segment_bytes):
                    if self.fd is not None:
                        self._finish(chunks)
                        chunks = []
                        out.sealed.append(self.segment_id)
                        os.close(self.fd)
                        self.fd = None
                    header = self._open_next()
                    created.append(self.segment_id)
                    out.names[self.segment_id] = segment_name(self.segment_id)
                    out.starts[self.segment_id] = 0
                    chunks.append(header)
                    self.position = len(header)
                if self.segment_id not in out.starts:
                    out.starts[self.segment_id] = self.position
                record = self.keyed.frame(payload, self.seq)
                self.seq += 1
                out.positions.append((self.segment_id, self.position, len(record)))
                chunks.append(record)
                self.position += len(record)
                out.sizes[self.segment_id] = self.position
            self._finish(chunks)
            if created:
                fsync_dir(self.directory)
        except OSError as exc:
            return self._roll_back(exc, out, created)
        return out

    def _finish(self, chunks: list[bytes]) -> None:
        assert self.fd is not None
        if chunks:
            write_all(self.fd, b"".join(chunks))
            _sync(self.fd)

    def _roll_back(self, exc: OSError, out: Written, created: list[int]) -> WriteFailed:
        """Undo a failed write: truncate what existed, remove what was created, and
        start a new segment next time (the state of the failed file is not trusted)."""
        sealed = list(out.sealed)
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        for segment_id, start in out.starts.items():
            path = self.directory / segment_name(segment_id)
            try:
                if segment_id in created:
                    path.unlink(missing_ok=True)
                else:
                    os.truncate(path, start)
                    sealed.append(segment_id)
            except OSError as undo:
                log.error("spool: could not roll back %s after a failed write: %s", path, undo)
                if segment_id not in created:
                    sealed.append(segment_id)
        if not out.starts and self.segment_id:
            sealed.append(self.segment_id)
        return WriteFailed(exc, sealed)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def write_acks(directory: Path, fds: dict[int, int], acks: dict[int, list[int]]) -> dict[int, int]:
    """Append acknowledged offsets to each segment's ``.ack`` file (no fsync).

    Returns the bytes written per segment. A failure is logged, not raised:
    the worst outcome of a lost acknowledgement is a record sent twice.
    """
    written: dict[int, int] = {}
    for segment_id, offsets in acks.items():
        data = frame(pack_acks(offsets), ACK_MAGIC)
        try:
            fd = fds.get(segment_id)
            if fd is None:
                path = ack_path(directory / segment_name(segment_id))
                fd = fds[segment_id] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            write_all(fd, data)
        except OSError as exc:
            _ack_failures.note(
                "spool: recording %d acknowledgements for segment %d failed (%s); "
                "those records will be sent again after a restart",
                len(offsets),
                segment_id,
                exc,
            )
            continue
        written[segment_id] = len(data)
    return written
