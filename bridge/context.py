"""What a handler gets besides the event: `Context`, with typed data and follow-up emission."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Generator
from typing import Any, Final

import msgspec

from bridge.errors import MaxDepthExceeded
from bridge.event import Event
from bridge.metrics import METRICS
from bridge.threads import handler_loop
from bridge.typed import EventData, to_event

log = logging.getLogger("bridge.handlers")


class _Queued:
    """What `Context.emit` returns: already done, so ``await ctx.emit(e)`` keeps working."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that ends at once: the await is over


_QUEUED: Final = _Queued()


class Context:
    """What a handler gets besides the event: typed data and follow-up emission."""

    __slots__ = (
        "_decoded",
        "_thread",
        "closed",
        "data",
        "depth",
        "event",
        "follow_ups",
        "max_depth",
        "resources",
        "scope",
    )

    def __init__(self, event: Event, depth: int, *, max_depth: int) -> None:
        self.event = event
        self.depth = depth
        #: ``handlers.max_depth``: how deep follow-ups may nest.
        self.max_depth = max_depth
        #: ``event.data`` decoded into the running handler's ``data=`` type, else raw.
        self.data: Any = event.data
        self.follow_ups: list[Event] = []
        #: Set once the event's handlers ran: a later follow-up would be lost, so it raises.
        self.closed = False
        self._decoded: dict[type[Any], Any] | None = None
        #: This event's resolved dependencies and their cleanups (`bridge.inject`), once any.
        self.scope: Any = None
        #: The bus's open resources (`bridge.resources.OpenResources`), set by the bus.
        self.resources: Any = None
        # The loop's thread: `emit` from any other thread goes through the loop.
        self._thread = threading.get_ident()

    def decode(self, data_type: type[Any]) -> Any:
        """``event.data`` as ``data_type``, decoded once per event and type."""
        if self._decoded is None:
            self._decoded = {}
        try:
            return self._decoded[data_type]
        except KeyError:
            pass
        value = msgspec.convert(self.event.data, data_type)
        self._decoded[data_type] = value
        return value

    def emit(self, event: Event | EventData) -> Awaitable[None]:
        """Queue a follow-up event, from an ``async def`` handler or a plain ``def`` one.

        It runs through the same pipeline and routing after this event's own
        handlers and delivery, and its result is part of this event's result.
        It is queued when this returns; the awaitable returned is already
        done, so ``await ctx.emit(e)`` and a plain ``ctx.emit(e)`` are the same.
        From a handler thread it is queued on the loop (and this waits for
        that). Raises `MaxDepthExceeded` past ``handlers.max_depth``, and
        `RuntimeError` once this event's handlers finished (a timed-out
        ``def`` handler running on) or from a thread that is no handler's.
        """
        if threading.get_ident() == self._thread:
            self._queue(event)
        else:
            loop = handler_loop()
            if loop is None:
                raise RuntimeError(
                    f"ctx.emit({type(event).__name__}) from a thread that is not a handler "
                    "thread: "
                    "call it from the handler itself"
                )
            done: concurrent.futures.Future[None] = concurrent.futures.Future()

            def queue_on_loop() -> None:
                try:
                    self._queue(event)
                except BaseException as exc:
                    done.set_exception(exc)
                else:
                    done.set_result(None)

            loop.call_soon_threadsafe(queue_on_loop)
            done.result()
        return _QUEUED

    def _queue(self, event: Event | EventData) -> None:
        if not isinstance(event, Event):
            if not isinstance(event, EventData):
                raise TypeError(
                    f"ctx.emit() takes an Event or an EventData, got {type(event).__name__}"
                )
            event = to_event(event)
        if self.closed:
            # Whoever raised this may have no one left to tell (a timed-out thread): log it.
            message = (
                f"ctx.emit({event.type!r}) after the handlers of {self.event.type!r} "
                f"{self.event.id} finished (a timed-out handler running on?): "
                "the follow-up is refused"
            )
            log.error(message)
            METRICS.error("handler", "late_follow_up")
            raise RuntimeError(message)
        limit = self.max_depth
        if self.depth + 1 > limit:
            raise MaxDepthExceeded(
                f"follow-up {event.type!r} of {self.event.type!r} would be nested "
                f"{self.depth + 1} deep; handlers.max_depth is {limit} (a cycle of follow-ups?)"
            )
        self.follow_ups.append(event)
