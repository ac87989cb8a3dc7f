"""Fire-and-forget emission (`bridge.bus.Bus.send`): the tasks, and their failures logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from bridge.metrics import Metrics
from bridge.results import EmitResult

log = logging.getLogger("bridge.bus")


class Sends:
    """The tasks `Bus.send` started and not yet done (strong references: the loop keeps
    only weak ones), and the logging and counting of how they failed."""

    __slots__ = ("_metrics", "_tasks")

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._tasks: set[asyncio.Task[EmitResult]] = set()

    def start(self, emit: Coroutine[Any, Any, EmitResult]) -> asyncio.Task[EmitResult]:
        task = asyncio.get_running_loop().create_task(emit)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[EmitResult]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("bus.send(): the event failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
            self._metrics.error("send", type(exc).__name__)

    async def wait(self, grace: float) -> None:
        """Until every send still running ended, for at most ``grace`` seconds."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
