"""Group commit: trips to the spool's writer thread, one at a time.

The loop gathers appends, dead letters, acknowledgements and deletes into a `Job`
while the previous trip runs; `Committer` hands each job to the writer thread, where
`run_job` does the file work and returns a `JobResult` that the spool applies.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Final

from bridge.errors import SpoolError
from bridge.spool.records import Segment
from bridge.spool.writer import AreaWriter, WriteFailed, Written, remove_segment, write_acks

log = logging.getLogger("bridge.spool")

#: Acknowledgements alone wait this long for a write to share (they need no fsync).
ACK_DELAY_S: Final = 0.05


@dataclass
class Job:
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
    deletes: list[Segment] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.payloads or self.dead_payloads or self.acks or self.deletes)


@dataclass
class JobResult:
    pending: Written | WriteFailed | None = None
    dead: Written | WriteFailed | None = None
    ack_bytes: dict[int, int] = field(default_factory=dict)
    deleted: list[int] = field(default_factory=list)
    seconds: float = 0.0


def run_job(
    job: Job,
    pending_writer: AreaWriter,
    dead_writer: AreaWriter,
    pending_dir: Path,
    ack_fds: dict[int, int],
) -> JobResult:
    """The writer thread: records, then dead letters, then acknowledgements, then deletes."""
    start = perf_counter()
    result = JobResult()
    if job.payloads:
        result.pending = pending_writer.write(job.payloads)
    if job.dead_payloads:
        result.dead = dead_writer.write(job.dead_payloads)
    if job.acks:
        result.ack_bytes = write_acks(pending_dir, ack_fds, job.acks)
    for segment in job.deletes:
        fd = ack_fds.pop(segment.id, None)
        if fd is not None:
            os.close(fd)
        remove_segment(segment.path)
        result.deleted.append(segment.id)
    result.seconds = perf_counter() - start
    return result


class Committer:
    """Runs `job` in the writer thread whenever woken; work that arrives meanwhile
    gathers in the next `job` and shares its trip (and its fsync).

    ``run`` is the writer-thread part, ``apply`` and ``fail`` run back on the loop
    with its result, or with the error when ``run`` raised (a bug: disk errors come
    back in the result).
    """

    def __init__(
        self,
        run: Callable[[Job], JobResult],
        apply: Callable[[Job, JobResult], None],
        fail: Callable[[Job, SpoolError], None],
    ) -> None:
        self.job = Job()
        self._run, self._apply, self._fail = run, apply, fail
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def running(self) -> bool:
        """Between `start` and the end of `stop`."""
        return self._task is not None

    def start(self, executor: Executor) -> None:
        self._task = asyncio.create_task(self._loop(executor), name="evbridge-spool-writer")

    def wake(self) -> None:
        """Run `job` now (or right after the trip in progress)."""
        self._wake.set()

    def soon(self) -> None:
        """Run `job` within `ACK_DELAY_S`, unless something wakes the writer first."""
        if self._timer is None and not self._wake.is_set():
            self._timer = asyncio.get_running_loop().call_later(ACK_DELAY_S, self._due)

    def _due(self) -> None:
        self._timer = None
        self._wake.set()

    def closing(self) -> None:
        """Write what is gathered, then end (`stop` waits for that)."""
        self._closing = True
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            await self._task
            self._task = None

    async def flush(self) -> None:
        """Wait until everything gathered so far is written."""
        while self._task is not None and not self._task.done():
            if self.job:
                self._idle.clear()
                self._wake.set()
            elif self._idle.is_set():
                return
            await self._idle.wait()

    async def _loop(self, executor: Executor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._closing:
                await self._wake.wait()
            self._wake.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            job, self.job = self.job, Job()
            if not job:
                if self._closing:
                    return
                continue
            self._idle.clear()
            try:
                result = await loop.run_in_executor(executor, self._run, job)
            except Exception as exc:  # a bug, not a disk error: those come back in the result
                log.exception("spool writer failed")
                self._fail(job, SpoolError(f"spool write failed: {exc!r}"))
            else:
                self._apply(job, result)
            if not self.job:
                self._idle.set()
