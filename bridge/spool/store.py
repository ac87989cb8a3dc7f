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
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

from bridge.errors import SpoolError
from bridge.metrics import METRICS, Metrics
from bridge.spool.cursor import READ_MAX_BYTES, Cursor
from bridge.spool.deadletters import replay
from bridge.spool.files import SpoolFiles
from bridge.spool.framing import HEADER_SIZE
from bridge.spool.health import WriteHealth
from bridge.spool.job import Committer, Job, JobResult
from bridge.spool.layout import Head
from bridge.spool.ledger import Ledger
from bridge.spool.records import RecoveryReport, Segment, SpoolItem, SpoolStatus
from bridge.spool.tail import TAIL_BYTES, TAIL_COST_PER_BYTE, Tail
from bridge.spool.writer import WriteFailed

__all__ = [
    "READ_MAX_BYTES",
    "TAIL_BYTES",
    "TAIL_COST_PER_BYTE",
    "Cursor",
    "RecoveryReport",
    "Spool",
    "SpoolItem",
    "SpoolStatus",
    "default_segment_bytes",
]

log = logging.getLogger("bridge.spool")

MIN_SEGMENT_BYTES: Final = 4096
MAX_SEGMENT_BYTES: Final = 64 * 1024 * 1024


def default_segment_bytes(max_bytes: int) -> int:
    """An eighth of the bound, between 4 KiB and 64 MiB: space comes back in steps this size."""
    return max(MIN_SEGMENT_BYTES, min(MAX_SEGMENT_BYTES, max_bytes // 8))


class Spool:
    """The on-disk outbox under ``directory``. Use ``async with`` or `open` / `close`.

    ``head(payload) -> (sink, accepted_ns)`` reads the two things the spool
    needs to know of a record (see `bridge.spool.codec`). With
    ``sink_prefix(sink)``, the bytes all of a sink's records start with,
    cursors pick their records without decoding them (``accepted_ns`` of what
    they return is then 0). ``metrics`` (default: the process-wide
    `bridge.metrics.METRICS`) is where it and its cursors count: the bus's, for
    the spool of a bus.
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
        metrics: Metrics = METRICS,
    ) -> None:
        self.directory = Path(directory)
        self.metrics = metrics
        self.head = head
        self.sink_prefix = sink_prefix
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or default_segment_bytes(max_bytes)
        self._files = SpoolFiles(self.directory, head, self.segment_bytes)
        self._ledger = Ledger(self._files.pending_dir, max_bytes)
        self._commit = Committer(self._files.write, self._apply, self._fail)
        self._health = WriteHealth(
            self._files.pending_dir, lambda: self._files.executor, lambda: self._closing
        )
        self._committed = asyncio.Event()
        #: Successful writes so far; pass it to `wait_committed` to wait for the next.
        self.commits = 0
        self._tail = Tail(tail_bytes)
        self._closing = False
        self.report = RecoveryReport()

    # --- lifecycle ------------------------------------------------------------

    async def open(self) -> RecoveryReport:
        """Lock the directory, recover what is on disk, and start the writer."""
        if self._commit.running:
            return self.report
        executor, self.report = await self._files.open(self._ledger)
        self.metrics.spool_recovered.inc(self.report.recovered)
        self.metrics.spool_corrupt_records.inc(self.report.corrupt)
        self._commit.start(executor)
        return self.report

    async def close(self) -> None:
        """Write everything accepted so far, then release the directory."""
        if not self._commit.running:
            return
        self._closing = True
        self._commit.closing()
        self._committed.set()
        await self._health.stop()
        await self._commit.stop()
        assert self._files.executor is not None
        done = [s for s in self._ledger.segments.values() if s.unacked <= 0 and not s.deleting]
        await asyncio.get_running_loop().run_in_executor(
            self._files.executor, self._files.close, done
        )
        for segment in done:
            del self._ledger.segments[segment.id]
            self._ledger.used -= segment.size + segment.ack_bytes
        self._files.release()

    async def __aenter__(self) -> Spool:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def reader_executor(self) -> ThreadPoolExecutor:
        """The cursors' threads, owned by the spool: started by `open`, shut down by `close`."""
        return self._files.reader_executor()

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
        if self._closing or not self._commit.running:
            raise SpoolError("the spool is not open", code="spool_closed")
        size = sum(map(len, payloads)) + HEADER_SIZE * len(payloads)
        self._ledger.reserve(size)
        job = self._commit.job
        job.payloads.extend(payloads)
        job.sinks.extend(sinks)
        job.objects.extend(objects if objects is not None else [None] * len(payloads))
        job.reserved += size
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        job.waiters.append(future)
        self._commit.wake()
        await future

    async def dead_letter(self, items: Sequence[SpoolItem], payloads: Sequence[bytes]) -> None:
        """Store ``payloads`` in the dead-letter area (fsync'd), then acknowledge ``items``.

        The dead-letter area is not bounded by ``max_bytes``: a record in the
        spool already holds its place, and refusing would block delivery.
        """
        if not payloads:
            return
        if not self._commit.running:
            raise SpoolError("the spool is not open", code="spool_closed")
        job = self._commit.job
        job.dead_payloads.extend(payloads)
        job.dead_sinks.extend(item.sink for item in items)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        job.dead_waiters.append(future)
        self._commit.wake()
        await future
        self.ack(items)

    def ack(self, items: Iterable[SpoolItem]) -> None:
        """Mark ``items`` delivered: persisted soon, in the background."""
        job = self._commit.job
        for item in items:
            segment = self._ledger.segments.get(item.segment)
            if segment is None or segment.deleting:
                continue
            segment.unacked -= 1
            backlog = self._ledger.pending.get(item.sink)
            if backlog is not None:
                backlog.events -= 1
                backlog.bytes -= item.size
            if segment.unacked <= 0 and segment.sealed:
                self._schedule_delete(segment)
            else:
                job.acks.setdefault(item.segment, []).append(item.offset)
        self._commit.soon()

    def _schedule_delete(self, segment: Segment) -> None:
        segment.deleting = True
        self._commit.job.acks.pop(segment.id, None)
        self._commit.job.deletes.append(segment)
        self._commit.soon()

    async def flush(self) -> None:
        """Wait until everything accepted or acknowledged so far is written."""
        await self._commit.flush()

    # --- the writer's results -------------------------------------------------------

    def _fail(self, job: Job, error: SpoolError) -> None:
        self._ledger.reserved -= job.reserved
        for future in (*job.waiters, *job.dead_waiters):
            if not future.done():
                future.set_exception(error)

    def _apply(self, job: Job, result: JobResult) -> None:
        """Back on the loop: make what the writer did visible."""
        pending = result.pending
        if isinstance(pending, WriteFailed):
            self._ledger.reserved -= job.reserved
            self._seal(pending.sealed)
            error = SpoolError(f"writing the spool failed: {pending}")
            self.metrics.error("spool", "write_failed")
            self._health.failures.note(
                "spool write of %d records failed: %s (readiness is 503 until it can write)",
                len(job.payloads),
                pending,
            )
            self._health.failing(str(pending))
            for future in job.waiters:
                if not future.done():
                    future.set_exception(error)
        elif pending is not None:
            self._ledger.reserved -= job.reserved
            self._health.succeeded()
            self._ledger.add_written(pending, job.sinks, dead=False)
            self._tail.add(pending, job.sinks, job.payloads, job.objects)
            self._seal(pending.sealed)
            for future in job.waiters:
                if not future.done():
                    future.set_result(None)
            self.metrics.spool_commit_duration.observe(result.seconds)
            self.metrics.spool_commit_records.observe(len(job.payloads))
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
            self._ledger.add_written(dead, job.dead_sinks, dead=True)
            for future in job.dead_waiters:
                if not future.done():
                    future.set_result(None)
        self._ledger.acks_written(result.ack_bytes)
        self._ledger.deleted(result.deleted)

    def from_tail(
        self, segment_id: int, offset: int, sink: str, max_items: int, max_bytes: int = 1 << 62
    ) -> tuple[list[SpoolItem], int] | None:
        """Records of ``sink`` from the in-memory tail at this position (`Tail.take`)."""
        return self._tail.take(segment_id, offset, sink, max_items, max_bytes)

    def _seal(self, segment_ids: Iterable[int]) -> None:
        for segment_id in segment_ids:
            segment = self._ledger.segments.get(segment_id)
            if segment is None:
                continue
            segment.sealed = True
            if segment.unacked <= 0 and not segment.deleting:
                self._schedule_delete(segment)

    async def replay_dead_letters(
        self, revive: Callable[[bytes], bytes], sink: str | None = None
    ) -> int:
        """Move dead letters (of ``sink``, or all) back to pending; returns how many.

        Each is appended (fsync'd) before it is removed from the dead-letter
        area, so a crash in between replays it twice, never zero times.
        Raises `SpoolFull` if they do not fit (what was moved so far stays moved).
        """
        executor = self._files.executor
        if not self._commit.running or executor is None:
            raise SpoolError("the spool is not open", code="spool_closed")
        return await replay(
            self._files.dead_dir,
            self._files.dead_writer,
            self.head,
            executor=executor,
            append=self.append,
            ledger=self._ledger,
            revive=revive,
            sink=sink,
        )

    # --- reading ------------------------------------------------------------------

    def cursor(self, sink: str) -> Cursor:
        """A reader of ``sink``'s pending records, from the oldest."""
        return Cursor(self, sink, metrics=self.metrics)

    @property
    def segments(self) -> Mapping[int, Segment]:
        """The pending segments by ascending id (for cursors: read, never change)."""
        return self._ledger.segments

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
        return self._ledger.used

    @property
    def full(self) -> bool:
        """True after an append was refused, until space comes back (for readiness)."""
        return self._ledger.refused

    @property
    def write_error(self) -> str | None:
        """Why the spool cannot write (the disk is full, ...), or None while it can.

        Set by a failed write, cleared by the next successful write or by a probe
        write that succeeds (tried every `PROBE_INTERVAL_S`): readiness is 503 meanwhile.
        """
        return self._health.error

    def sinks(self) -> list[str]:
        """Every sink with records pending (including ones the config may no longer have)."""
        return self._ledger.sinks()

    def status(self) -> SpoolStatus:
        return self._ledger.status()

    def pending_events(self) -> int:
        return self._ledger.pending_events()
