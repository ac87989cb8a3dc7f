"""A group of background tasks owned by one component (a sink, a supervisor).

Fire-and-forget tasks are easy to lose: the event loop keeps only a weak
reference, a crash is reported (if at all) when the task is garbage
collected, and nobody cancels them on shutdown. `TaskGroup` holds them,
logs a crash once when it happens (and counts it), and cancels what is left
on `close`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from bridge.metrics import METRICS, Metrics
from bridge.sinks.toolkit.describe import describe

T = TypeVar("T")


class TaskGroup:
    """Background tasks of ``owner`` (a name for log lines), cancelled on `close`.

    Unlike `asyncio.TaskGroup`, one task failing does not cancel the others:
    these tasks are independent chores (probes, drains, late closes).
    """

    def __init__(
        self, owner: str, log: logging.Logger, *, metrics: Metrics = METRICS, stage: str = "sink"
    ) -> None:
        self.owner = owner
        self._log = log
        self._metrics = metrics
        self._stage = stage
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Run ``coro`` in the background; it is tracked until it ends."""
        if self._closed:
            coro.close()
            raise RuntimeError(f"{self.owner}: the task group is closed")
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.owner} {name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here, so asyncio never reports it again
        if exc is not None:
            self._log.error("%s: background task %r crashed: %s", self.owner, task.get_name(),
                            describe(exc), exc_info=exc)  # fmt: skip
            self._metrics.error(self._stage, type(exc).__name__)

    async def close(self) -> None:
        """Cancel every task still running and wait for them to end. Idempotent."""
        self._closed = True
        while self._tasks:
            pending = list(self._tasks)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self._tasks.difference_update(pending)
