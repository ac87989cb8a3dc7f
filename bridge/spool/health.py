"""Whether the spool can write: the last write error, and the probe that clears it.

While writes fail (a full or broken disk), readiness is 503 and the failures are logged
once per interval (`Throttled`). A probe write every `PROBE_INTERVAL_S` notices when the
disk takes data again, so readiness comes back without a client risking an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Final

from bridge.spool.throttle import Throttled

log = logging.getLogger("bridge.spool")

#: While writes fail, a probe write checks this often whether the disk takes data again.
PROBE_INTERVAL_S: Final = 1.0
PROBE_BYTES: Final = 64 * 1024
PROBE_NAME: Final = "write-probe"


class WriteHealth:
    """The spool's write health. ``executor()`` is the writer thread (None once closed);
    ``closing()`` is true once the spool began to close."""

    def __init__(
        self,
        directory: Path,
        executor: Callable[[], Executor | None],
        closing: Callable[[], bool],
    ) -> None:
        self._directory = directory
        self._executor = executor
        self._closing = closing
        #: Why the last write failed, until a write (or a probe) succeeds again.
        self.error: str | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self.failures = Throttled(log, logging.ERROR)

    def failing(self, why: str) -> None:
        """A write failed: remember why, and probe until the disk takes data again."""
        self.error = why
        if self._probe_task is None and not self._closing():
            self._probe_task = asyncio.create_task(self._probe(), name="evbridge-spool-probe")

    def succeeded(self) -> None:
        """A write (or a probe) succeeded."""
        if self.error is None:
            return
        self.error = None
        missed = self.failures.reset()
        log.info("the spool can write again (%d failed writes not logged one by one)", missed)

    async def stop(self) -> None:
        """Stop the probe, if it runs."""
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
            self._probe_task = None

    async def _probe(self) -> None:
        """While writes fail, check every `PROBE_INTERVAL_S` whether the disk takes data,
        so readiness comes back without waiting for a client to risk an event."""
        loop = asyncio.get_running_loop()
        try:
            while self.error is not None and not self._closing():
                await asyncio.sleep(PROBE_INTERVAL_S)
                executor = self._executor()
                if executor is None or self._closing():
                    break
                if await loop.run_in_executor(executor, self._probe_write):
                    self.succeeded()
        finally:
            self._probe_task = None

    def _probe_write(self) -> bool:
        """Writer thread: can `PROBE_BYTES` be written and fsync'd right now?"""
        path = self._directory / PROBE_NAME
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
