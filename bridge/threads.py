"""The threads that run plain ``def`` handlers: a bounded pool of daemon threads.

Each bus runs its plain ``def`` handlers in a `HandlerThreads` pool of
``handlers.threads`` threads, never in the event loop's default executor, so
the bridge's own blocking work (file sink writes, spool reads) never queues
behind a handler.

A thread cannot be stopped. When a handler outlives its timeout the pipeline
records ``timeout`` and the chain goes on; the thread stays busy until the
function returns, and is counted meanwhile in
``evbridge_handler_threads_stuck{handler}``. A run still waiting for a free
thread when its deadline passes never starts: the wait counts against the
handler's timeout, so a pool full of stuck handlers makes sync handlers time
out, and nothing else waits.

The threads are daemon threads, started on demand, and the pool is not a
`concurrent.futures.ThreadPoolExecutor`: that one's exit hook joins every
worker at interpreter exit, so one stuck handler would keep the process alive
forever. `HandlerThreads.close` names the handlers still running in one
warning and leaves them behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable
from itertools import count
from time import perf_counter
from typing import Any

from bridge.gauges import ThreadGauges
from bridge.metrics import METRICS, Metrics

log = logging.getLogger("bridge.handlers")

_names = count(1)
_current = threading.local()


def handler_loop() -> asyncio.AbstractEventLoop | None:
    """The loop of the bus whose handler this thread runs, or None off handler threads.

    How a plain ``def`` handler's ``ctx.emit`` reaches the loop (`bridge.handlers.Context`).
    """
    return getattr(_current, "loop", None)


class Job:
    """One run of a plain ``def`` handler.

    ``future`` resolves, on the loop, to None or to the exception the function
    raised (any `BaseException`, carried as a value so that a ``SystemExit``
    never travels through the event loop's task machinery); what it returned
    is then in ``returned`` (a sync callable may return a coroutine, which the
    caller awaits on the loop). Cancelling ``future`` before a thread took the
    job means it never runs. The function runs in a copy of the submitter's
    `contextvars` context, as `asyncio.to_thread` does.
    """

    __slots__ = (
        "args",
        "context",
        "deadline",
        "fn",
        "future",
        "handler",
        "loop",
        "returned",
        "started",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        handler: str,
        deadline: float,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> None:
        self.loop = loop
        self.future: asyncio.Future[BaseException | None] = loop.create_future()
        self.handler = handler
        #: `time.perf_counter` time after which the handler has timed out.
        self.deadline = deadline
        self.fn = fn
        self.args = args
        # Request ids and tracing context set by the caller reach the handler.
        self.context = contextvars.copy_context()
        self.returned: Any = None
        #: `time.perf_counter` time a thread took it; 0.0 while it waits for one.
        self.started = 0.0


def _settle(future: asyncio.Future[BaseException | None], raised: BaseException | None) -> None:
    if not future.done():
        future.set_result(raised)


class _Generation:
    """The queue, threads and idle count between two `HandlerThreads.close` calls."""

    __slots__ = ("idle", "jobs", "threads")

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        #: One token per thread waiting for a job that no `submit` has claimed yet.
        self.idle = threading.Semaphore(0)
        self.threads: list[threading.Thread] = []


class HandlerThreads:
    """A bounded pool of daemon threads for plain ``def`` handlers (see the module docstring)."""

    def __init__(self, size: int, *, metrics: Metrics = METRICS) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size!r}")
        self.size = size
        self._generation = _Generation()
        #: Thread id → the job it runs, across generations (a stuck thread outlives `close`).
        self._running: dict[int, Job] = {}
        self._metrics = metrics
        metrics.handler_threads.add(self)

    def submit(self, handler: str, deadline: float, fn: Callable[..., Any], *args: Any) -> Job:
        """Queue ``fn(*args)`` for a thread; await ``job.future`` for its outcome."""
        job = Job(asyncio.get_running_loop(), handler, deadline, fn, args)
        generation = self._generation
        generation.jobs.put(job)
        if not generation.idle.acquire(blocking=False) and len(generation.threads) < self.size:
            thread = threading.Thread(
                target=self._work,
                args=(generation,),
                name=f"evbridge-handler-{next(_names)}",
                daemon=True,
            )
            thread.start()
            generation.threads.append(thread)
        return job

    def _work(self, generation: _Generation) -> None:
        me = threading.get_ident()
        running = self._running
        while True:
            job = generation.jobs.get()
            if job is None:
                return
            # A cancelled (timed-out) run that no thread had taken yet never starts.
            if not job.future.done():
                job.started = perf_counter()
                running[me] = job
                _current.loop = job.loop
                raised: BaseException | None = None
                try:
                    job.returned = job.context.run(job.fn, *job.args)
                except BaseException as exc:  # the handler's, reported on the loop
                    raised = exc
                del running[me]
                # RuntimeError: the loop is closed, nobody waits for this run any more.
                with contextlib.suppress(RuntimeError):
                    job.loop.call_soon_threadsafe(_settle, job.future, raised)
                del job, raised
            generation.idle.release()

    def gauges(self) -> ThreadGauges:
        """Threads allowed, busy now, and busy past their handler's timeout (by handler)."""
        jobs = list(self._running.copy().values())
        now = perf_counter()
        stuck = Counter(job.handler for job in jobs if job.deadline < now)
        return ThreadGauges(self.size, len(jobs), dict(stuck))

    def close(self) -> None:
        """Let the idle threads end, and name in one warning the handlers still running.

        Busy threads are left to finish on their own: every run still going
        has outlived its timeout or had its request cut off at the shutdown
        grace, so nothing waits for it, and as daemon threads they do not hold
        up the exit. A later `submit` starts fresh threads.
        """
        generation, self._generation = self._generation, _Generation()
        for _ in generation.threads:
            generation.jobs.put(None)
        left = list(self._running.copy().values())
        if not left:
            return
        now = perf_counter()
        by_handler = Counter(job.handler for job in left)
        longest = max(now - job.started for job in left)
        log.warning(
            "%d handler threads still busy when the bus stopped, left behind (daemon threads do "
            "not hold up the exit): %s; the longest has run %.1fs",
            len(left),
            ", ".join(f"{name} ({n})" for name, n in sorted(by_handler.items())),
            longest,
            extra={"stuck_threads": len(left), "handlers": sorted(by_handler)},
        )
        self._metrics.error("handler", "thread_left_behind")
