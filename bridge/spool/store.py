"""The spool: a crash-safe, bounded, append-only outbox on local disk.

- `Spool.append` returns once the records are on disk and fsync'd. Appends
  that arrive while a write is in progress wait for the next one and share
  its fsync (group commit). All file writes run in one thread of their own,
  never on the event loop.
- Delivered records are acknowledged with `Spool.ack`: their offsets go to
  the segment's ``.ack`` file (written, not fsync'd: losing an
  acknowledgement only means sending that record again), and a segment whose
  records are all acknowledged is deleted.
- `Spool.cursor` reads one sink's pending records in spool order.
- `Spool.dead_letter` moves records to the dead-letter area (fsync'd before
  the originals are acknowledged).
- Bounded: an append that would take the files past ``max_bytes`` raises
  `SpoolFull`; nothing already accepted is ever dropped to make room.

Startup (`Spool.open`) reads every file once, streaming, and cuts a torn or
corrupt tail at the last good record (see `bridge.spool.framing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import BinaryIO, Final

from bridge.errors import SpoolError, SpoolFull
from bridge.metrics import METRICS
from bridge.spool.framing import (
    HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    Damage,
    Keyed,
    SegmentFormat,
    read_format,
    scan_segment,
)
from bridge.spool.layout import (
    DEAD,
    LOCK,
    PENDING,
    Head,
    SinkBacklog,
    ack_path,
    iter_surveys,
    open_regular,
    read_acks,
    safe_head,
    segment_ids,
    segment_name,
)
from bridge.spool.throttle import Throttled
from bridge.spool.writer import (
    AreaWriter,
    WriteFailed,
    Written,
    fsync_dir,
    remove_segment,
    write_acks,
)

log = logging.getLogger("bridge.spool")

MIN_SEGMENT_BYTES: Final = 4096
#: The newest records stay in memory (up to this many, and bytes: ``delivery.tail_bytes``)
#: for cursors that are caught up: they take them from there instead of reading them back.
TAIL_RECORDS: Final = 4096
TAIL_BYTES: Final = 8 * 1024 * 1024
#: What a tail record costs in memory per byte of its payload: the payload plus the
#: event objects it was encoded from, kept alive with it (the soak benchmark measured
#: ~1.7 KB of RSS per record for ~0.5 KB payloads). Charged against `TAIL_BYTES`.
TAIL_COST_PER_BYTE: Final = 3
#: Acknowledgements alone wait this long for a write to share (they need no fsync).
ACK_DELAY_S: Final = 0.05
MAX_SEGMENT_BYTES: Final = 64 * 1024 * 1024
READ_MAX_BYTES: Final = 4 * 1024 * 1024
READ_CHUNK: Final = 256 * 1024
#: Cursors read files in threads of their own (never the default executor).
READER_THREADS: Final = 2
#: While writes fail, a probe write checks this often whether the disk takes data again.
PROBE_INTERVAL_S: Final = 1.0
PROBE_BYTES: Final = 64 * 1024
PROBE_NAME: Final = "write-probe"


def default_segment_bytes(max_bytes: int) -> int:
    """An eighth of the bound, between 4 KiB and 64 MiB: space comes back in steps this size."""
    return max(MIN_SEGMENT_BYTES, min(MAX_SEGMENT_BYTES, max_bytes // 8))


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
class _Segment:
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


@dataclass
class _Job:
    """Work for one trip to the writer thread."""

    payloads: list[bytes] = field(default_factory=list)
    sinks: list[str] = field(default_factory=list)
    objects: list[object] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    reserved: int = 0
    dead_payloads: list[bytes] = field(default_factory=list)
    dead_sinks: list[str] = field(default_factory=list)
    dead_waiters: list[asyncio.Future[None]] = field(default_factory=list)
    acks: dict[int, list[int]] = field(default_factory=dict)
    deletes: list[_Segment] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.payloads or self.dead_payloads or self.acks or self.deletes)


@dataclass
class _JobResult:
    pending: Written | WriteFailed | None = None
    dead: Written | WriteFailed | None = None
    ack_bytes: dict[int, int] = field(default_factory=dict)
    deleted: list[int] = field(default_factory=list)
    seconds: float = 0.0


def _backlog(table: dict[str, SinkBacklog], sink: str) -> SinkBacklog:
    found = table.get(sink)
    if found is None:
        found = table[sink] = SinkBacklog()
    return found


class Spool:
    """The on-disk outbox under ``directory``. Use ``async with`` or `open` / `close`.

    ``head(payload) -> (sink, accepted_ns)`` reads the two things the spool
    needs to know of a record (see `bridge.spool.codec`). With
    ``sink_prefix(sink)``, the bytes all of a sink's records start with,
    cursors pick their records without decoding them (``accepted_ns`` of what
    they return is then 0).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        head: Head,
        sink_prefix: Callable[[str], bytes] | None = None,
        max_bytes: int = 1 << 30,
        segment_bytes: int | None = None,
        tail_bytes: int = TAIL_BYTES,
    ) -> None:
        self.directory = Path(directory)
        self.head = head
        self.sink_prefix = sink_prefix
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or default_segment_bytes(max_bytes)
        self._pending_dir = self.directory / PENDING
        self._dead_dir = self.directory / DEAD
        self._segments: dict[int, _Segment] = {}
        self._pending: dict[str, SinkBacklog] = {}
        self._dead: dict[str, SinkBacklog] = {}
        self._used = 0  # bytes in files
        self._reserved = 0  # bytes accepted for the next write
        self._refused = False
        self._job = _Job()
        self._lock_fd: int | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._reader: ThreadPoolExecutor | None = None
        #: Why the last write failed, until a write (or a probe) succeeds again.
        self._write_error: str | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._write_failures = Throttled(log, logging.ERROR)
        self._pending_writer: AreaWriter | None = None
        self._dead_writer: AreaWriter | None = None
        self._ack_fds: dict[int, int] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._committed = asyncio.Event()
        #: Successful writes so far; pass it to `wait_committed` to wait for the next.
        self.commits = 0
        # The newest records, contiguous in the log: (segment, offset) -> index in _tail.
        self._tail: list[SpoolItem] = []
        self._tail_index: dict[tuple[int, int], int] = {}
        self._tail_base = 0  # how many items were dropped from the front of _tail
        self._tail_bytes = 0
        self.tail_limit = tail_bytes
        self._ack_timer: asyncio.TimerHandle | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._closing = False
        self.report = RecoveryReport()

    # --- lifecycle ------------------------------------------------------------

    async def open(self) -> RecoveryReport:
        """Lock the directory, recover what is on disk, and start the writer."""
        if self._writer_task is not None:
            return self.report
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="evbridge-spool")
        self._reader = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="evbridge-spool-read")
        loop = asyncio.get_running_loop()
        try:
            self.report = await loop.run_in_executor(self._executor, self._recover)
        except SpoolError:
            self._release()
            raise
        except OSError as exc:  # unreadable, read-only, ...: one line naming the path
            self._release()
            raise SpoolError(
                f"cannot open the spool at {str(self.directory)!r}: {exc.strerror or exc}"
                + (f": {exc.filename}" if exc.filename else ""),
                code="spool_unusable",
            ) from None
        except BaseException:
            self._release()
            raise
        self._writer_task = asyncio.create_task(self._run_writer(), name="evbridge-spool-writer")
        return self.report

    async def close(self) -> None:
        """Write everything accepted so far, then release the directory."""
        if self._writer_task is None:
            return
        self._closing = True
        self._wake.set()
        self._committed.set()
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
            self._probe_task = None
        await self._writer_task
        self._writer_task = None
        assert self._executor is not None
        done = [s for s in self._segments.values() if s.unacked <= 0 and not s.deleting]
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close_files, done)
        for segment in done:
            del self._segments[segment.id]
            self._used -= segment.size + segment.ack_bytes
        self._release()

    async def __aenter__(self) -> Spool:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _reader_executor(self) -> ThreadPoolExecutor:
        """The cursors' threads, owned by the spool: started by `open`, shut down by `close`."""
        if self._reader is None:
            raise SpoolError("the spool is not open", code="spool_closed")
        return self._reader

    def _release(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._reader is not None:
            self._reader.shutdown(wait=True)
            self._reader = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _close_files(self, delivered: list[_Segment]) -> None:
        """Writer thread: close every file; remove segments with nothing left to deliver."""
        for writer in (self._pending_writer, self._dead_writer):
            if writer is not None:
                writer.close()
        for fd in self._ack_fds.values():
            os.close(fd)
        self._ack_fds.clear()
        for segment in delivered:
            remove_segment(segment.path)

    # --- recovery (writer thread) ---------------------------------------------

    def _lock(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o644)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise SpoolError(
                f"spool entry {str(self.directory / LOCK)!r} is not a regular file; "
                "move it out of the spool directory",
                code="spool_hostile_entry",
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SpoolError(
                f"spool directory {str(self.directory)!r} is in use by another evbridge "
                f"process (pid {owner})",
                code="spool_locked",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _recover(self) -> RecoveryReport:
        start = perf_counter()
        self._lock()
        self._pending_dir.mkdir(exist_ok=True)
        self._dead_dir.mkdir(exist_ok=True)
        report = RecoveryReport()
        for survey in iter_surveys(self._pending_dir, self.head):
            self._note_damage(survey.path, survey.damage, report, survey.keyed)
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
            segment = _Segment(
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
            self._segments[segment.id] = segment
            self._used += segment.size + segment.ack_bytes
            report.segments += 1
            report.recovered += survey.unacked
            for sink, backlog in survey.pending.items():
                mine = _backlog(self._pending, sink)
                mine.events += backlog.events
                mine.bytes += backlog.bytes
                if backlog.oldest_ns is not None and (
                    mine.oldest_ns is None or backlog.oldest_ns < mine.oldest_ns
                ):
                    mine.oldest_ns = backlog.oldest_ns
        self._remove_orphan_acks()
        for survey in iter_surveys(self._dead_dir, self.head, with_acks=False):
            self._note_damage(survey.path, survey.damage, report, survey.keyed)
            self._used += survey.valid_end
            for sink, backlog in survey.pending.items():
                mine = _backlog(self._dead, sink)
                mine.events += backlog.events
                mine.bytes += backlog.bytes
                report.dead_letters += backlog.events
        pending_ids = segment_ids(self._pending_dir)
        dead_ids = segment_ids(self._dead_dir)
        self._pending_writer = AreaWriter(
            self._pending_dir, (pending_ids[-1] if pending_ids else 0) + 1, self.segment_bytes
        )
        self._dead_writer = AreaWriter(
            self._dead_dir, (dead_ids[-1] if dead_ids else 0) + 1, self.segment_bytes
        )
        report.duration_s = perf_counter() - start
        METRICS.spool_recovered.inc(report.recovered)
        METRICS.spool_corrupt_records.inc(report.corrupt)
        if report.recovered or report.corrupt or report.dead_letters:
            log.info(
                "spool %s recovered: %d pending records in %d segments, %d damaged regions "
                "(%d bytes) cut, %d dead letters, in %.3fs",
                self.directory,
                report.recovered,
                report.segments,
                report.corrupt,
                report.corrupt_bytes,
                report.dead_letters,
                report.duration_s,
            )
        return report

    def _note_damage(
        self, path: Path, damage: list[Damage], report: RecoveryReport, keyed: Keyed | None
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

    def _remove_orphan_acks(self) -> None:
        for entry in os.scandir(self._pending_dir):
            name = entry.name
            if name.endswith(".ack") and not os.path.exists(entry.path[:-4] + ".seg"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    # --- appending --------------------------------------------------------------

    async def append(
        self,
        sinks: Sequence[str],
        payloads: Sequence[bytes],
        objects: Sequence[object] | None = None,
    ) -> None:
        """Store ``payloads`` (one per sink name) and return once they are fsync'd.

        All or nothing: raises `SpoolFull` (nothing stored) when they do not
        fit, `SpoolError` when the disk write fails. ``objects`` (the decoded
        form of each payload) are handed to cursors that are caught up, which
        then need not read the records back from the file.
        """
        if not payloads:
            return
        if self._closing or self._writer_task is None:
            raise SpoolError("the spool is not open", code="spool_closed")
        size = sum(map(len, payloads)) + HEADER_SIZE * len(payloads)
        if self._used + self._reserved + size > self.max_bytes:
            self._refused = True
            raise SpoolFull(
                f"the spool is full ({self._used + self._reserved} of {self.max_bytes} bytes "
                f"used; {size} more needed): retry later"
            )
        self._reserved += size
        self._refused = False
        job = self._job
        job.payloads.extend(payloads)
        job.sinks.extend(sinks)
        job.objects.extend(objects if objects is not None else [None] * len(payloads))
        job.reserved += size
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        job.waiters.append(future)
        self._wake.set()
        await future

    async def dead_letter(self, items: Sequence[SpoolItem], payloads: Sequence[bytes]) -> None:
        """Store ``payloads`` in the dead-letter area (fsync'd), then acknowledge ``items``.

        The dead-letter area is not bounded by ``max_bytes``: a record in the
        spool already holds its place, and refusing would block delivery.
        """
        if not payloads:
            return
        if self._writer_task is None:
            raise SpoolError("the spool is not open", code="spool_closed")
        job = self._job
        job.dead_payloads.extend(payloads)
        job.dead_sinks.extend(item.sink for item in items)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        job.dead_waiters.append(future)
        self._wake.set()
        await future
        self.ack(items)

    def ack(self, items: Iterable[SpoolItem]) -> None:
        """Mark ``items`` delivered: persisted soon, in the background."""
        job = self._job
        for item in items:
            segment = self._segments.get(item.segment)
            if segment is None or segment.deleting:
                continue
            segment.unacked -= 1
            backlog = self._pending.get(item.sink)
            if backlog is not None:
                backlog.events -= 1
                backlog.bytes -= item.size
            if segment.unacked <= 0 and segment.sealed:
                self._schedule_delete(segment)
            else:
                job.acks.setdefault(item.segment, []).append(item.offset)
        if self._ack_timer is None and not self._wake.is_set():
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY_S, self._ack_due)

    def _ack_due(self) -> None:
        self._ack_timer = None
        self._wake.set()

    def _schedule_delete(self, segment: _Segment) -> None:
        segment.deleting = True
        self._job.acks.pop(segment.id, None)
        self._job.deletes.append(segment)
        if self._ack_timer is None and not self._wake.is_set():
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY_S, self._ack_due)

    async def flush(self) -> None:
        """Wait until everything accepted or acknowledged so far is written."""
        while self._writer_task is not None and not self._writer_task.done():
            if self._job:
                self._idle.clear()
                self._wake.set()
            elif self._idle.is_set():
                return
            await self._idle.wait()

    # --- the writer -------------------------------------------------------------

    async def _run_writer(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._executor is not None
        while True:
            if not self._closing:
                await self._wake.wait()
            self._wake.clear()
            if self._ack_timer is not None:
                self._ack_timer.cancel()
                self._ack_timer = None
            job, self._job = self._job, _Job()
            if not job:
                if self._closing:
                    return
                continue
            self._idle.clear()
            try:
                result = await loop.run_in_executor(self._executor, self._write, job)
            except Exception as exc:  # a bug, not a disk error: those come back in the result
                log.exception("spool writer failed")
                self._fail(job, SpoolError(f"spool write failed: {exc!r}"))
            else:
                self._apply(job, result)
            if not self._job:
                self._idle.set()

    def _write(self, job: _Job) -> _JobResult:
        """The writer thread: records, then dead letters, then acknowledgements, then deletes."""
        start = perf_counter()
        assert self._pending_writer is not None
        assert self._dead_writer is not None
        result = _JobResult()
        if job.payloads:
            result.pending = self._pending_writer.write(job.payloads)
        if job.dead_payloads:
            result.dead = self._dead_writer.write(job.dead_payloads)
        if job.acks:
            result.ack_bytes = write_acks(self._pending_dir, self._ack_fds, job.acks)
        for segment in job.deletes:
            fd = self._ack_fds.pop(segment.id, None)
            if fd is not None:
                os.close(fd)
            remove_segment(segment.path)
            result.deleted.append(segment.id)
        result.seconds = perf_counter() - start
        return result

    def _fail(self, job: _Job, error: SpoolError) -> None:
        self._reserved -= job.reserved
        for future in (*job.waiters, *job.dead_waiters):
            if not future.done():
                future.set_exception(error)

    def _apply(self, job: _Job, result: _JobResult) -> None:
        """Back on the loop: make what the writer did visible."""
        pending = result.pending
        if isinstance(pending, WriteFailed):
            self._reserved -= job.reserved
            self._seal(pending.sealed)
            error = SpoolError(f"writing the spool failed: {pending}")
            METRICS.error("spool", "write_failed")
            self._write_failures.note(
                "spool write of %d records failed: %s (readiness is 503 until it can write)",
                len(job.payloads),
                pending,
            )
            self._writes_failing(str(pending))
            for future in job.waiters:
                if not future.done():
                    future.set_exception(error)
        elif pending is not None:
            self._reserved -= job.reserved
            self._writes_succeed()
            self._add_written(pending, job.sinks, self._pending, segments=True)
            self._add_tail(pending, job)
            self._seal(pending.sealed)
            for future in job.waiters:
                if not future.done():
                    future.set_result(None)
            METRICS.spool_commit_duration.observe(result.seconds)
            METRICS.spool_commit_records.observe(len(job.payloads))
            self.commits += 1
            self._committed.set()
            self._committed = asyncio.Event()
        dead = result.dead
        if isinstance(dead, WriteFailed):
            error = SpoolError(f"writing a dead letter failed: {dead}")
            log.error("spool dead-letter write failed: %s", dead)
            for future in job.dead_waiters:
                if not future.done():
                    future.set_exception(error)
        elif dead is not None:
            self._add_written(dead, job.dead_sinks, self._dead, segments=False)
            for future in job.dead_waiters:
                if not future.done():
                    future.set_result(None)
        for segment_id, written in result.ack_bytes.items():
            segment = self._segments.get(segment_id)
            if segment is not None:
                segment.ack_bytes += written
            self._used += written
        for segment_id in result.deleted:
            segment = self._segments.pop(segment_id, None)
            if segment is not None:
                self._used -= segment.size + segment.ack_bytes
                self._refused = False

    def _add_written(
        self,
        written: Written,
        sinks: list[str],
        table: dict[str, SinkBacklog],
        *,
        segments: bool,
    ) -> None:
        for segment_id, size in written.sizes.items():
            if segments:
                segment = self._segments.get(segment_id)
                if segment is None:
                    segment = self._segments[segment_id] = _Segment(
                        segment_id, self._pending_dir / written.names[segment_id]
                    )  # a new segment: records start after its header
                self._used += size - segment.size
                segment.size = size
            else:
                self._used += size - written.starts[segment_id]
        for (segment_id, _, size), sink in zip(written.positions, sinks, strict=True):
            backlog = _backlog(table, sink)
            backlog.events += 1
            backlog.bytes += size
            if segments:
                segment = self._segments[segment_id]
                segment.records += 1
                segment.unacked += 1

    def _add_tail(self, written: Written, job: _Job) -> None:
        tail, index = self._tail, self._tail_index
        base = self._tail_base
        for (segment_id, offset, size), sink, payload, obj in zip(
            written.positions, job.sinks, job.payloads, job.objects, strict=True
        ):
            index[(segment_id, offset)] = base + len(tail)
            tail.append(SpoolItem(segment_id, offset, size, sink, 0, payload, obj))
            self._tail_bytes += size * TAIL_COST_PER_BYTE
        limit = self.tail_limit
        if len(tail) > TAIL_RECORDS * 3 // 2 or self._tail_bytes > limit:
            keep_from = max(0, len(tail) - TAIL_RECORDS)  # trim in steps, not per record
            dropped = 0
            for item in tail[:keep_from]:
                del index[(item.segment, item.offset)]
                dropped += item.size * TAIL_COST_PER_BYTE
            while keep_from < len(tail) - 1 and self._tail_bytes - dropped > limit // 2:
                item = tail[keep_from]
                del index[(item.segment, item.offset)]
                dropped += item.size * TAIL_COST_PER_BYTE
                keep_from += 1
            del tail[:keep_from]
            self._tail_base += keep_from
            self._tail_bytes -= dropped

    def _from_tail(
        self, segment_id: int, offset: int, sink: str, max_items: int, max_bytes: int = 1 << 62
    ) -> tuple[list[SpoolItem], int] | None:
        """Records of ``sink`` from the in-memory tail starting at this position (up to
        ``max_items``, and ``max_bytes`` after the first), and the position after the last
        record looked at; None if the tail does not start there."""
        start = self._tail_index.get((segment_id, offset))
        if start is None:
            return None
        tail = self._tail
        out: list[SpoolItem] = []
        i = start - self._tail_base
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

    def _seal(self, segment_ids: Iterable[int]) -> None:
        for segment_id in segment_ids:
            segment = self._segments.get(segment_id)
            if segment is None:
                continue
            segment.sealed = True
            if segment.unacked <= 0 and not segment.deleting:
                self._schedule_delete(segment)

    # --- write failures (a full or broken disk) -----------------------------------

    def _writes_failing(self, why: str) -> None:
        self._write_error = why
        if self._probe_task is None and not self._closing:
            self._probe_task = asyncio.create_task(self._probe(), name="evbridge-spool-probe")

    def _writes_succeed(self) -> None:
        if self._write_error is None:
            return
        self._write_error = None
        missed = self._write_failures.reset()
        log.info("the spool can write again (%d failed writes not logged one by one)", missed)

    async def _probe(self) -> None:
        """While writes fail, check every `PROBE_INTERVAL_S` whether the disk takes data,
        so readiness comes back without waiting for a client to risk an event."""
        loop = asyncio.get_running_loop()
        try:
            while self._write_error is not None and not self._closing:
                await asyncio.sleep(PROBE_INTERVAL_S)
                if self._executor is None or self._closing:
                    break
                if await loop.run_in_executor(self._executor, self._probe_write):
                    self._writes_succeed()
        finally:
            self._probe_task = None

    def _probe_write(self) -> bool:
        """Writer thread: can `PROBE_BYTES` be written and fsync'd right now?"""
        path = self._pending_dir / PROBE_NAME
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, bytes(PROBE_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return True

    # --- dead letters -------------------------------------------------------------

    async def replay_dead_letters(
        self, revive: Callable[[bytes], bytes], sink: str | None = None
    ) -> int:
        """Move dead letters (of ``sink``, or all) back to pending; returns how many.

        Each is appended (fsync'd) before it is removed from the dead-letter
        area, so a crash in between replays it twice, never zero times.
        Raises `SpoolFull` if they do not fit (what was moved so far stays moved).
        """
        if self._writer_task is None or self._executor is None:
            raise SpoolError("the spool is not open", code="spool_closed")
        loop = asyncio.get_running_loop()
        executor = self._executor
        moved = 0
        for segment_id in await loop.run_in_executor(executor, segment_ids, self._dead_dir):
            picked = await loop.run_in_executor(executor, self._pick_dead, segment_id, sink)
            if not picked:
                continue
            done: set[int] = set()
            try:
                for start in range(0, len(picked), 1000):
                    chunk = picked[start : start + 1000]
                    payloads = [revive(payload) for _, _, _, payload in chunk]
                    await self.append([s for _, _, s, _ in chunk], payloads)
                    done.update(offset for offset, _, _, _ in chunk)
            finally:
                if done:
                    old, new = await loop.run_in_executor(
                        executor, self._drop_dead, segment_id, done
                    )
                    self._used += new - old
                    for offset, size, record_sink, _ in picked:
                        if offset in done:
                            backlog = _backlog(self._dead, record_sink)
                            backlog.events -= 1
                            backlog.bytes -= size
                    moved += len(done)
        if moved:
            log.info("spool: %d dead letters replayed (sink: %s)", moved, sink or "all")
        return moved

    def _pick_dead(self, segment_id: int, sink: str | None) -> list[tuple[int, int, str, bytes]]:
        """Writer thread: ``(offset, size, sink, payload)`` of the dead letters to replay."""
        assert self._dead_writer is not None
        if self._dead_writer.segment_id == segment_id:
            self._dead_writer.close()  # the next dead letter starts a new segment
        path = self._dead_dir / segment_name(segment_id)
        picked: list[tuple[int, int, str, bytes]] = []
        try:
            file = open_regular(path)
        except FileNotFoundError:
            return picked
        with file:
            for record in scan_segment(file):
                if isinstance(record, Damage):
                    continue
                record_sink = safe_head(self.head, record.payload)[0]
                if sink is None or record_sink == sink:
                    size = record.end - record.offset
                    picked.append((record.offset, size, record_sink, record.payload))
        return picked

    def _drop_dead(self, segment_id: int, offsets: set[int]) -> tuple[int, int]:
        """Writer thread: rewrite a dead segment without ``offsets``; (old size, new size)."""
        path = self._dead_dir / segment_name(segment_id)
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
        fsync_dir(self._dead_dir)
        return old, size

    # --- reading ------------------------------------------------------------------

    def cursor(self, sink: str) -> Cursor:
        """A reader of ``sink``'s pending records, from the oldest."""
        return Cursor(self, sink)

    async def wait_committed(self, seen: int) -> None:
        """Return once `commits` is past ``seen`` (or the spool is closing)."""
        while self.commits == seen and not self._closing:
            await self._committed.wait()

    # --- inspection -----------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """True once `close` began: readers should stop."""
        return self._closing

    @property
    def disk_bytes(self) -> int:
        return self._used

    @property
    def full(self) -> bool:
        """True after an append was refused, until space comes back (for readiness)."""
        return self._refused

    @property
    def write_error(self) -> str | None:
        """Why the spool cannot write (the disk is full, ...), or None while it can.

        Set by a failed write, cleared by the next successful write or by a probe
        write that succeeds (tried every `PROBE_INTERVAL_S`): readiness is 503 meanwhile.
        """
        return self._write_error

    def sinks(self) -> list[str]:
        """Every sink with records pending (including ones the config may no longer have)."""
        return [sink for sink, backlog in self._pending.items() if backlog.events > 0]

    def status(self) -> SpoolStatus:
        return SpoolStatus(
            pending={k: SinkBacklog(v.events, v.bytes) for k, v in self._pending.items()},
            dead={k: SinkBacklog(v.events, v.bytes) for k, v in self._dead.items()},
            disk_bytes=self._used,
            max_bytes=self.max_bytes,
            full=self._refused,
        )

    def pending_events(self) -> int:
        return sum(b.events for b in self._pending.values())


class Cursor:
    """Reads one sink's pending records in spool order, oldest first.

    `read` returns what is committed now (possibly nothing); `Spool.wait_committed`
    waits for more. Records acknowledged in an earlier run are skipped.
    """

    def __init__(self, spool: Spool, sink: str) -> None:
        self.spool = spool
        self.sink = sink
        self._segment_id = -1
        self._offset = 0
        self._file: BinaryIO | None = None
        self._file_id = -1
        self._fmt: SegmentFormat | None = None
        self._acked: set[int] = set()
        #: True when the last `read` reached the end of what is committed.
        self.at_end = False
        self._prefix = spool.sink_prefix(sink) if spool.sink_prefix is not None else None

    def _current(self) -> _Segment | None:
        segments = self.spool._segments
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
                cached = self.spool._from_tail(
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
                    self.spool._reader_executor(),
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

    def _note(self, segment: _Segment, damage: list[Damage]) -> None:
        for region in damage:
            if region.start in segment.known_damage:
                continue
            segment.known_damage.add(region.start)
            METRICS.spool_corrupt_records.inc()
            log.error(
                "spool segment %s: %d bytes at offset %d went bad after they were written; skipped",
                segment.path,
                region.end - region.start,
                region.start,
            )

    def _read(
        self, segment: _Segment, start: int, end: int, max_items: int, max_bytes: int
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
