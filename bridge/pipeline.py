"""Ordered, isolated handler execution for one event.

Guarantees, for each event:
- its handlers run one after another, never concurrently, in priority order
  (higher first) and then registration order;
- a handler that raises (any `BaseException`: ``SystemExit`` and
  ``KeyboardInterrupt`` are its failure, not the process's), or outlives its
  timeout, is recorded (outcome ``error`` / ``timeout``), logged once, counted,
  and the next handler runs;
- a timed-out ``async def`` handler that ignores its cancellation is abandoned
  after ``handlers.cancel_grace_s`` (`bridge.cancelguard`); a plain ``def`` one
  keeps its thread busy, and the chain goes on (`bridge.threads`);
- `StopChain` ends the chain, `Skip` records the handler as skipped;
- after an ``error`` or ``timeout`` the handler's error policy
  (`bridge.policy`: ``continue``, ``stop`` or ``reject``) decides whether the
  chain goes on and whether the event is published;
- ``asyncio.CancelledError`` sent to the task from outside (not by the
  watchdog) is always re-raised, even when a handler caught it; one nobody
  sent (a handler awaited a future cancelled elsewhere) is the handler's error.

Timeouts use one shared watchdog timer instead of one timer per handler run:
starting a handler only writes its deadline into the worker's slot, and the
watchdog (ticking every `Watchdog.TICK` seconds while any event is in flight)
cancels the worker whose handler is past its deadline. A timeout therefore
fires up to one tick late.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from bisect import bisect_left
from collections.abc import Callable, Sequence
from functools import partial
from time import perf_counter
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Final

import msgspec

from bridge import tracing
from bridge.cancelguard import Abandoned, Resume
from bridge.event import Event
from bridge.handlers import Context, Handler, Skip, StopChain
from bridge.inject import Unset, resolve, resolve_now
from bridge.inject import close as close_scope
from bridge.metrics import BUCKETS, METRICS
from bridge.middleware import Middleware, through
from bridge.policy import OnError, rejection
from bridge.results import (
    ERROR,
    OK,
    SKIPPED,
    STOPPED,
    TIMEOUT,
    ErrorInfo,
    HandlerOutcome,
    Outcome,
)

if TYPE_CHECKING:
    from bridge.threads import HandlerThreads, Job

log = logging.getLogger("bridge.pipeline")
_INF: Final = float("inf")
_DONE: Final = object()


class Slot:
    """One worker task's running-handler record, watched for deadlines."""

    __slots__ = ("base", "deadline", "fired", "handler", "job", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        #: Cancellations the task already had pending: more than this (and the
        #: watchdog's own) is a cancellation from outside, never swallowed.
        self.base = task.cancelling()
        self.deadline = _INF
        self.handler: Handler | None = None
        #: The running handler's thread job, when it runs in one (for the timeout message).
        self.job: Job | None = None
        self.fired = False


class Watchdog:
    """Cancels workers whose running handler is past its deadline."""

    TICK: Final = 0.02

    def __init__(self) -> None:
        self.slots: set[Slot] = set()
        self._timer: asyncio.TimerHandle | None = None

    def enter(self, slot: Slot) -> None:
        self.slots.add(slot)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.TICK, self._check)

    def leave(self, slot: Slot) -> None:
        self.slots.discard(slot)

    def _check(self) -> None:
        now = perf_counter()
        for slot in self.slots:
            if slot.deadline <= now and not slot.fired:
                slot.fired = True
                slot.task.cancel()
        self._timer = (
            asyncio.get_running_loop().call_later(self.TICK, self._check) if self.slots else None
        )

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


async def _invoke(
    handler: Handler,
    event: Event,
    ctx: Context,
    slot: Slot,
    threads: HandlerThreads,
    cancel_grace: float,
) -> None:
    """One call of ``handler``, whatever its shape (`bridge.signature`): injected
    parameters resolved on the loop, plain ``def`` in a handler thread, and an awaitable
    it returns (``lambda e, c: notify(e)``) awaited, never dropped."""
    call = handler.call
    returned: object
    if call is not None:
        if handler.is_async or handler.inline:
            returned = call(event, ctx)
        else:
            returned = await _in_thread(handler, slot, threads, call, event, ctx)
        await _drive(returned, handler, event, slot, cancel_grace)
        return
    params = handler.params
    assert params is not None, "a plan without call has params"
    try:
        kwargs = (
            await resolve(params, event, ctx)
            if handler.inject_async
            else resolve_now(params, event, ctx)
        )
        if handler.is_async or handler.inline:
            returned = handler.target(**kwargs)
        else:
            returned = await _in_thread(handler, slot, threads, partial(handler.target, **kwargs))
        await _drive(returned, handler, event, slot, cancel_grace)
    finally:
        scope = ctx.scope
        if scope is not None and scope.own:
            # ``use_cache=False`` generators: the handler's own, closed as it ends.
            await close_scope(scope, event, own=True)


async def _drive(
    returned: object, handler: Handler, event: Event, slot: Slot, cancel_grace: float
) -> None:
    """Await what a handler call returned, when it is awaitable."""
    if type(returned) is not CoroutineType:
        if returned is not None and inspect.isawaitable(returned):
            await returned
        return
    waiting = next(returned.__await__(), _DONE)
    if waiting is not _DONE:
        await Resume(
            returned,
            waiting,
            slot,
            name=handler.name,
            grace=cancel_grace,
            event=event,
        )


async def _in_thread(
    handler: Handler, slot: Slot, threads: HandlerThreads, fn: Callable[..., Any], *args: Any
) -> object:
    # Kept on the slot while it runs: a timeout's message says whether it ever started.
    job = slot.job = threads.submit(handler.name, slot.deadline, fn, *args)
    raised = await job.future  # a CancelledError leaves slot.job for that message
    slot.job = None
    if raised is not None:
        raise raised
    returned, job.returned = job.returned, None
    return returned


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _timed_out(timeout: float, job: Job | None, threads: HandlerThreads) -> str:
    text = f"timed out after {timeout:g}s"
    if job is None:
        return text
    if not job.started:
        return f"{text} waiting for a free handler thread (all {threads.size} busy)"
    return f"{text}; its thread cannot be stopped and runs on"


async def run_handlers(
    handlers: tuple[Handler, ...],
    event: Event,
    ctx: Context,
    slot: Slot,
    default_timeout: float,
    threads: HandlerThreads,
    cancel_grace: float,
    on_error: OnError | None = None,
    errors: list[BaseException] | None = None,
    middleware: Sequence[Middleware] = (),
) -> tuple[list[HandlerOutcome], ErrorInfo | None]:
    """Run ``handlers`` for ``event`` under the guarantees in this module's docstring.

    Plain ``def`` handlers run in ``threads``; ``cancel_grace`` is how long a
    timed-out ``async def`` handler may take to end once cancelled (`bridge.cancelguard`).
    A failed run is then handled by its policy (`bridge.policy`): the handler's
    own ``on_error``, else ``on_error``. Returns the runs and, when a policy
    rejected the event, why. ``errors`` (when given) collects every failed
    run's exception (a `TimeoutError` for a timeout). ``middleware`` wraps
    every call (`bridge.middleware`).
    """
    outcomes: list[HandlerOutcome] = []
    task = slot.task
    # Looked up once per event, not per run: this loop runs per handler per event.
    tracing_on = tracing.TRACER is not None
    plain = not middleware
    data = event.data
    traced = None
    for handler in handlers:
        timeout = handler.timeout or default_timeout
        error: str | None = None
        # ``failure`` (the exception) is set, and read, only when the outcome is ``error``.
        failure: BaseException
        outcome: Outcome
        abandoned = False
        if tracing_on:
            traced = tracing.start_handler(handler.name)
        start = perf_counter()
        slot.deadline = start + timeout
        slot.handler = handler
        try:
            if handler.data_type is not None:
                ctx.data = ctx.decode(handler.data_type)
            elif ctx.data is not data:
                ctx.data = data
            if handler.direct and plain:
                # Most handlers: stepped here, up to its first suspension, as ``await``
                # would; most end there. ``next`` with a default: a coroutine that returns
                # None raises nothing.
                coro = handler.call(event, ctx)  # type: ignore[misc]  # direct: call is set
                waiting = next(coro.__await__(), _DONE)
                if waiting is not _DONE:
                    await Resume(
                        coro, waiting, slot, name=handler.name, grace=cancel_grace, event=event
                    )
            elif middleware:
                invoke = partial(_invoke, handler, event, ctx, slot, threads, cancel_grace)
                await through(middleware, invoke, handler, event, ctx)
            else:
                await _invoke(handler, event, ctx, slot, threads, cancel_grace)
            outcome = OK
        except StopChain as exc:
            outcome, error = STOPPED, str(exc) or None
        except (Skip, Unset) as exc:
            outcome, error = SKIPPED, str(exc) or None
        except asyncio.CancelledError as exc:
            if slot.fired:
                if task.uncancel() > slot.base:
                    raise
                outcome, error = TIMEOUT, _timed_out(timeout, slot.job, threads)
                slot.job = None
            elif task.cancelling() > slot.base:
                raise
            else:
                # Nobody cancelled the task: the handler raised it (say, it awaited a
                # future that something else cancelled), so it is the handler's error.
                outcome, error, failure = ERROR, _describe(exc), exc
                log.warning(
                    "handler %s failed on %s %s: %s", handler.name, event.type, event.id, error
                )
                METRICS.error("handler", "CancelledError")
        except Abandoned:
            # Logged and counted when it was left behind; the watchdog's cancellation is spent.
            task.uncancel()
            abandoned = True
            outcome = TIMEOUT
            error = f"timed out after {timeout:g}s and ignored its cancellation: abandoned"
        except msgspec.ValidationError as exc:
            outcome, error = ERROR, f"data does not match {handler.data_type!r}: {exc}"
            failure = exc
            log.warning(
                "handler %s could not decode %s %s: %s", handler.name, event.type, event.id, exc
            )
            METRICS.error("handler", "data_decode")
        except Exception as exc:
            outcome, error, failure = ERROR, _describe(exc), exc
            if getattr(exc, "log_traceback", True):
                log.exception("handler %s failed on %s %s", handler.name, event.type, event.id)
            else:
                # An error that says all there is (an HTTP handler's answer): one line.
                log.warning(
                    "handler %s failed on %s %s: %s", handler.name, event.type, event.id, error
                )
            METRICS.error("handler", type(exc).__name__)
        except GeneratorExit:
            raise
        except BaseException as exc:
            # SystemExit, KeyboardInterrupt or a custom BaseException from handler code is
            # that handler's failure, not a request to stop the sidecar.
            outcome, error, failure = ERROR, _describe(exc), exc
            log.error(
                "handler %s raised %s on %s %s: recorded as its error",
                handler.name,
                type(exc).__name__,
                event.type,
                event.id,
                exc_info=exc,
            )
            METRICS.error("handler", type(exc).__name__)
        finally:
            # Leaving ``slot.handler`` set is harmless: the watchdog reads it
            # only for a slot whose deadline passed.
            slot.deadline = _INF
        if slot.fired:
            slot.fired = False
            slot.job = None
            if outcome != TIMEOUT:
                # The handler swallowed the watchdog's cancellation: still a timeout.
                task.uncancel()
                outcome, error = TIMEOUT, f"timed out after {timeout:g}s"
            if not abandoned:
                log.warning(
                    "handler %s timed out on %s %s after %gs",
                    handler.name,
                    event.type,
                    event.id,
                    timeout,
                )
                METRICS.error("handler", "timeout")
        duration = perf_counter() - start
        # Inlined CounterChild.inc / HistogramChild.observe: this runs per handler per event.
        handler.runs[outcome].value += 1
        histogram = handler.durations
        histogram.buckets[bisect_left(BUCKETS, duration)] += 1
        histogram.sum += duration
        if traced is not None:
            failed = failure if outcome == ERROR else None
            tracing.end_handler(traced, outcome, error, failed, histogram, duration)
        if outcome is OK:
            # Most runs: nothing to decide, and ``retriable`` keeps its default.
            outcomes.append(HandlerOutcome(handler.name, OK, None, duration))
            continue
        # An error may say that running again cannot help (an HTTP endpoint's 4xx).
        retriable = outcome != ERROR or getattr(failure, "retriable", True) is not False
        run = HandlerOutcome(handler.name, outcome, error, duration, retriable)
        outcomes.append(run)
        if outcome == STOPPED:
            break
        if outcome in (ERROR, TIMEOUT):
            if errors is not None:
                errors.append(
                    failure if outcome == ERROR else TimeoutError(f"handler {handler.name} {error}")
                )
            policy = handler.on_error or on_error
            if policy == "reject":
                return outcomes, rejection(run, failure if outcome == ERROR else None)
            if policy == "stop":
                break
    return outcomes, None
