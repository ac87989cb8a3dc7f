"""Awaiting an ``async def`` handler so that one that ignores its cancellation can be left behind.

The pipeline runs a handler's coroutine up to its first suspension itself
(``next(coro.__await__(), done)``): most handlers finish without ever
suspending, and that costs about what an ``await`` costs. A handler that
suspends is driven on by `Resume`, which passes what the coroutine awaits up to
the event's task and what the task sends (or throws) back down, as ``await``
would, and watches for one thing: a cancellation that the coroutine caught and
did not end on (it awaits again).

Such a handler's remaining coroutine moves to a task of its own and gets
``handlers.cancel_grace_s`` to end (time for cleanup that awaits). Then:

- cancelled by the watchdog (its timeout): if it ended, the run is a plain
  ``timeout``; if not, `Resume` raises `Abandoned` and the task is left
  running unattended while the event's other handlers, its answer and its
  in-flight slot go on without it;
- cancelled by the caller (shutdown, a request cut off): the cancellation is
  re-raised after the grace, ended or not. A handler that caught the caller's
  cancellation and returned does not cancel it either: it is re-raised.

A left-behind task is referenced from `ABANDONED` until it ends (the loop keeps
only weak references to tasks), shown in ``evbridge_handler_tasks_abandoned``,
and counted per run in ``evbridge_errors_total{stage="handler",error_type="abandoned"}``
with one warning. At exit, `bridge.server.run.run_to_exit` cancels it once more
and names it if it still does not end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any, Final, Protocol

from bridge.metrics import METRICS, Metrics

if TYPE_CHECKING:
    from bridge.event import Event

log = logging.getLogger("bridge.pipeline")

HandlerCoroutine = Coroutine[Any, Any, object]

#: Handler tasks that ignored their cancellation, kept alive until they end.
#: One set for the process, not one per bus: an abandoned task outlives the run
#: (and the bus) that left it, and `bridge.server.run.run_to_exit` cancels them all
#: at exit. So ``evbridge_handler_tasks_abandoned`` is the process's count, shown in
#: the default metrics; each run's ``errors{abandoned}`` goes to its ``metrics``.
ABANDONED: Final[set[asyncio.Task[None]]] = set()
METRICS.handler_threads.abandoned = ABANDONED.__len__


class Slot(Protocol):
    """What the guard reads of the pipeline's running-handler record (`bridge.pipeline.Slot`).

    A protocol, so this module does not import the pipeline that imports it.
    """

    @property
    def task(self) -> asyncio.Task[object]: ...
    @property
    def base(self) -> int: ...
    @property
    def fired(self) -> bool: ...


class Abandoned(Exception):
    """A timed-out handler ignored its cancellation for the whole grace period."""


class Resume:
    """``await Resume(coro, waiting, ...)``: the rest of a handler that suspended on ``waiting``."""

    __slots__ = ("coro", "event", "grace", "metrics", "name", "slot", "waiting")

    def __init__(
        self,
        coro: HandlerCoroutine,
        waiting: object,
        slot: Slot | None,
        *,
        name: str = "",
        grace: float = 0.0,
        event: Event | None = None,
        metrics: Metrics = METRICS,
    ) -> None:
        self.coro = coro
        self.waiting = waiting
        #: None: just drive the coroutine (for the left-behind task itself).
        self.slot = slot
        self.name = name
        self.grace = grace
        self.event = event
        #: Where an abandoned run is counted (the running bus's).
        self.metrics = metrics

    def __await__(self) -> Generator[Any, Any, None]:
        coro, waiting = self.coro, self.waiting
        while True:
            try:
                sent = yield waiting
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as thrown:  # passed on to the handler
                try:
                    waiting = coro.throw(thrown)
                except StopIteration:
                    if self.slot is not None and isinstance(thrown, asyncio.CancelledError):
                        self._check_caller(thrown)
                    return
                except BaseException as raised:
                    if (
                        raised is not thrown
                        and self.slot is not None
                        and isinstance(thrown, asyncio.CancelledError)
                    ):
                        # It turned the cancellation into another exception.
                        self._check_caller(thrown)
                    raise
                if self.slot is not None and isinstance(thrown, asyncio.CancelledError):
                    # The handler caught its cancellation and awaits something else.
                    yield from self._ignored(waiting, thrown)
                    return
            else:
                try:
                    waiting = coro.send(sent)
                except StopIteration:
                    return

    def _outside(self) -> bool:
        """Whether someone other than the watchdog (alone) has cancelled the task and not
        taken it back: cancellations still pending beyond the watchdog's own. A handler's
        ``asyncio.timeout`` cancels the task too, but uncancels it before raising its
        TimeoutError, so that one does not count."""
        slot = self.slot
        assert slot is not None
        return slot.task.cancelling() > slot.base + (1 if slot.fired else 0)

    def _check_caller(self, cancellation: asyncio.CancelledError) -> None:
        # The handler caught the caller's cancellation and ended: the cancellation still stands.
        if self._outside():
            raise cancellation

    def _ignored(
        self, waiting: object, cancellation: asyncio.CancelledError
    ) -> Generator[Any, Any, None]:
        rest = _unattended(self.coro, waiting)
        name = f"abandoned handler {self.name}"
        # `run_to_exit` names the tasks left at exit by their coroutine's qualname.
        rest.__qualname__ = name  # type: ignore[attr-defined]
        task = asyncio.get_running_loop().create_task(rest, name=name)
        outside = self._outside()
        try:
            yield from asyncio.wait((task,), timeout=self.grace).__await__()
        except asyncio.CancelledError:
            if not task.done():
                self._leave(task, outside=True)
            raise
        if not task.done():
            self._leave(task, outside=outside)
            if not outside:
                raise Abandoned
        if outside:
            raise cancellation

    def _leave(self, task: asyncio.Task[None], *, outside: bool) -> None:
        ABANDONED.add(task)
        task.add_done_callback(ABANDONED.discard)
        event = self.event
        what = (event.type, event.id) if event is not None else ("?", "?")
        if outside:
            log.warning(
                "handler %s caught the cancellation of its caller on %s %s and did not end "
                "within %gs: abandoned, it runs on unattended",
                self.name,
                *what,
                self.grace,
                extra={"handler": self.name},
            )
        else:
            log.warning(
                "handler %s timed out on %s %s and did not end within %gs of its cancellation: "
                "abandoned, it runs on unattended; recorded as timeout, the event goes on",
                self.name,
                *what,
                self.grace,
                extra={"handler": self.name},
            )
        self.metrics.error("handler", "abandoned")


async def _unattended(coro: HandlerCoroutine, waiting: object) -> None:
    try:
        await Resume(coro, waiting, None)
    except (asyncio.CancelledError, GeneratorExit):
        raise
    except BaseException as exc:  # nobody awaits it; a SystemExit must not stop the loop
        log.debug("an abandoned handler ended with %s: %s", type(exc).__name__, exc)
