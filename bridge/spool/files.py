"""`SpoolFiles`: the spool's files on disk and the threads that touch them.

One object owns everything a `bridge.spool.store.Spool` keeps open: the directory
lock, the writer of each area (pending, dead letters), the open ``.ack`` files, the
writer thread (every file write, in order) and the reader threads cursors read
segments in. `open` starts the threads and recovers the directory; `close` closes
the files; `release` stops the threads and drops the lock. The store decides what
to write and when; this module only does it.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

from bridge.errors import SpoolError
from bridge.spool.job import Job, JobResult, run_job
from bridge.spool.layout import DEAD, PENDING, Head
from bridge.spool.ledger import Ledger
from bridge.spool.records import RecoveryReport, Segment
from bridge.spool.recovery import lock, recover
from bridge.spool.writer import AreaWriter, remove_segment

#: Cursors read files in threads of their own (never the default executor).
READER_THREADS: Final = 2


class SpoolFiles:
    """The files under ``directory`` and the spool's threads (writer and readers)."""

    def __init__(self, directory: Path, head: Head, segment_bytes: int) -> None:
        self.directory = directory
        self.pending_dir = directory / PENDING
        self.dead_dir = directory / DEAD
        self._head = head
        self._segment_bytes = segment_bytes
        self._lock_fd: int | None = None
        #: The writer thread: None until `open`, and again after `release`.
        self.executor: ThreadPoolExecutor | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._pending_writer: AreaWriter | None = None
        self._dead_writer: AreaWriter | None = None
        self._ack_fds: dict[int, int] = {}

    async def open(self, ledger: Ledger) -> tuple[ThreadPoolExecutor, RecoveryReport]:
        """Start the threads, lock the directory and recover it into ``ledger``.

        Returns the writer thread and what recovery found. On failure everything is
        released again; an `OSError` becomes one `SpoolError` naming the path.
        """
        executor = self.executor = ThreadPoolExecutor(1, thread_name_prefix="evbridge-spool")
        self._reader = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="evbridge-spool-read")
        loop = asyncio.get_running_loop()
        try:
            report = await loop.run_in_executor(executor, self._recover, ledger)
        except SpoolError:
            self.release()
            raise
        except OSError as exc:  # unreadable, read-only, ...: one line naming the path
            self.release()
            raise SpoolError(
                f"cannot open the spool at {str(self.directory)!r}: {exc.strerror or exc}"
                + (f": {exc.filename}" if exc.filename else ""),
                code="spool_unusable",
            ) from None
        except BaseException:
            self.release()
            raise
        return executor, report

    def reader_executor(self) -> ThreadPoolExecutor:
        """The cursors' threads: started by `open`, shut down by `release`."""
        if self._reader is None:
            raise SpoolError("the spool is not open", code="spool_closed")
        return self._reader

    @property
    def dead_writer(self) -> AreaWriter:
        """The dead-letter area's writer (use in the writer thread only; after `open`)."""
        assert self._dead_writer is not None
        return self._dead_writer

    def release(self) -> None:
        """Stop the threads (waiting for what they run) and release the directory lock."""
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None
        if self._reader is not None:
            self._reader.shutdown(wait=True)
            self._reader = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # --- in the writer thread ---------------------------------------------------

    def _recover(self, ledger: Ledger) -> RecoveryReport:
        """Writer thread: lock the directory and hand what recovery found to ``ledger``."""
        self._lock_fd = lock(self.directory)
        found = recover(
            self.directory, self.pending_dir, self.dead_dir, self._head, self._segment_bytes
        )
        ledger.take_over(found)
        self._pending_writer = found.pending_writer
        self._dead_writer = found.dead_writer
        return found.report

    def write(self, job: Job) -> JobResult:
        """Writer thread: append, acknowledge and delete what ``job`` holds."""
        assert self._pending_writer is not None
        assert self._dead_writer is not None
        return run_job(
            job, self._pending_writer, self._dead_writer, self.pending_dir, self._ack_fds
        )

    def close(self, delivered: list[Segment]) -> None:
        """Writer thread: close every file; remove segments with nothing left to deliver."""
        for writer in (self._pending_writer, self._dead_writer):
            if writer is not None:
                writer.close()
        for fd in self._ack_fds.values():
            os.close(fd)
        self._ack_fds.clear()
        for segment in delivered:
            remove_segment(segment.path)
