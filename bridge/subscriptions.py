"""Live subscriptions: ``async for`` over the events a bus processes.

Guarantees:
- a subscription sees only events whose processing finished after it was
  entered, in the order the bus finished them (FIFO per subscription);
- each subscriber has its own queue, bounded in events (``max_queue``) and in
  bytes (``max_queue_bytes``, as `bridge.memory.event_cost` estimates them),
  and all subscribers of a bus (its scopes included) share one bound in bytes
  (`bridge.hub.SubscriberBudget`, ``limits.max_total_subscriber_bytes``), so a slow
  subscriber never slows the pipeline and memory stays bounded however many
  never read. On overflow a subscriber either loses its oldest queued events
  (``drop_oldest``; the next item it reads carries ``dropped``) or is
  disconnected (``disconnect``; it reads what was queued, then
  `SubscriptionOverflow`). When the shared bound is reached, room is made in
  the queue holding the most bytes (the subscriber furthest behind), never by
  refusing a subscriber that keeps up; an event larger than a bound on its own
  is dropped for that subscriber (or disconnects it);
- with no subscribers, publishing an event costs one length check and keeps
  nothing;
- a subscription made with `bridge.bus.Bus.subscription` receives from that
  line on, before ``async with`` or the first ``async for`` (a request sent
  right after subscribing cannot race its answer); leaving the ``async with``
  block (or ``close()``) frees it at once, and one never closed is freed when it
  is garbage-collected: the hub holds its subscriptions weakly.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Final, Literal, Self

import msgspec

from bridge.errors import BridgeError
from bridge.event import Event
from bridge.hub import Bound, Hub
from bridge.memory import event_cost
from bridge.results import Status
from bridge.routing import compile_glob

Overflow = Literal["drop_oldest", "disconnect"]
OVERFLOW_POLICIES: Final = ("drop_oldest", "disconnect")


class SubscriptionOverflow(BridgeError):
    """The subscriber fell behind a bound of its queue under ``overflow="disconnect"``."""

    code = "subscription_overflow"


class Notice(msgspec.Struct, frozen=True):
    """One event as a subscriber sees it, after its handlers ran.

    ``status`` is the event's result status (``handled``, ``published``,
    ``spooled`` or ``rejected``); ``dropped`` counts events this subscriber
    lost to overflow just before this one (a gap marker; usually 0).
    """

    event: Event
    status: Status
    dropped: int = 0


class Subscription:
    """An async iterator of `Notice` for event types matching any of ``patterns``.

    ``max_queue`` bounds its queue in events, ``max_queue_bytes`` (default: the
    hub's ``limits.max_subscriber_bytes``) in bytes; see the module docstring.
    """

    # Slots: `offer` runs per event per subscriber and reads most of these.
    __slots__ = (
        "__weakref__",
        "_budget",
        "_drops_oldest",
        "_hub",
        "_max",
        "_max_queue_drops",
        "_overflow",
        "_queue",
        "_read_seq",
        "_ref",
        "_seq",
        "_thread",
        "_waiter",
        "closed",
        "dropped",
        "matches",
        "max_bytes",
        "overflow_bound",
        "overflowed",
        "patterns",
        "queued_bytes",
    )

    def __init__(
        self,
        hub: Hub,
        patterns: Sequence[str],
        *,
        max_queue: int,
        overflow: Overflow,
        max_queue_bytes: int | None = None,
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        budget = hub.budget
        max_bytes = budget.queue_bytes if max_queue_bytes is None else max_queue_bytes
        if max_bytes < 1:
            raise ValueError(f"max_queue_bytes must be at least 1, got {max_bytes}")
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}")
        if not patterns:
            raise ValueError("a subscription needs at least one type pattern")
        self.patterns = tuple(patterns)
        matchers = [compile_glob(p) for p in patterns]
        self.matches: Callable[[str], bool] = (
            matchers[0] if len(matchers) == 1 else lambda t: any(m(t) for m in matchers)
        )
        self._hub = hub
        self._budget = budget
        # The hot path's counter, looked up once: the hub's (its bus's metrics).
        self._max_queue_drops = hub.dropped["max_queue"]
        self._max = max_queue
        self.max_bytes = max_bytes
        self._overflow = overflow
        self._drops_oldest = overflow == "drop_oldest"
        # (event, status, sequence number, cost in bytes); a Notice is built only when
        # read, and a jump in the sequence is the count of events dropped before it.
        self._queue: deque[tuple[Event, Status, int, int]] = deque()
        #: Bytes (`event_cost`) of what is queued now, charged to the hub's budget too.
        self.queued_bytes = 0
        self._seq = 0
        self._read_seq = 0
        self._waiter: asyncio.Future[None] | None = None
        self.dropped = 0
        self.overflowed = False
        #: The bound that disconnected it (``overflow="disconnect"``), once it did.
        self.overflow_bound: Bound | None = None
        self.closed = False
        #: How the hub holds it (weakly), once added.
        self._ref: weakref.ref[Subscription] | None = None
        # The loop's thread: collected in another one (a cycle freed by the collector in
        # a handler thread), it leaves its cleanup to the loop (`Hub.bury`).
        self._thread = threading.get_ident()

    def offer(self, event: Event, status: Status, cost: int | None = None) -> None:
        """Queue an event without ever waiting (called by the hub, which passes
        ``cost``, the event's `event_cost`, computed once for all subscribers)."""
        if self.closed or self.overflowed:
            return
        if cost is None:
            cost = event_cost(event)
        queue = self._queue
        self._seq += 1
        budget = self._budget
        if len(queue) >= self._max and self._drops_oldest and cost <= self.max_bytes:
            # Inlined `_drop_oldest`: a stalled subscriber takes this path for every event
            # (not for an event too big to queue: it is dropped alone, in `_make_room`).
            freed = queue.popleft()[3]
            self.queued_bytes -= freed
            budget.used -= freed
            self.dropped += 1
            self._max_queue_drops.value += 1
        if (
            self.queued_bytes + cost > self.max_bytes
            or budget.used + cost > budget.limit
            or len(queue) >= self._max
        ) and not self._make_room(cost):
            return
        queue.append((event, status, self._seq, cost))
        self.queued_bytes += cost
        budget.used += cost
        if self._waiter is not None:
            self._wake()

    def _make_room(self, cost: int) -> bool:
        """Apply the overflow policy so that ``cost`` more bytes fit; False if the
        event is not queued (dropped, or the subscriber was disconnected)."""
        queue, budget = self._queue, self._budget
        if self._overflow == "disconnect":
            if len(queue) >= self._max:
                self._disconnect("max_queue")
            elif self.queued_bytes + cost > self.max_bytes:
                self._disconnect("max_queue_bytes")
            else:
                self._disconnect("max_total_subscriber_bytes")
            return False
        # An event that could never fit is lost alone: emptying the queue would not help.
        if cost > self.max_bytes:
            self._count_drop("max_queue_bytes")
            return False
        if cost > budget.limit:
            self._count_drop("max_total_subscriber_bytes")
            return False
        while self.queued_bytes + cost > self.max_bytes:
            self._drop_oldest("max_queue_bytes")
        if budget.used + cost > budget.limit and not budget.make_room(cost):
            self._count_drop("max_total_subscriber_bytes")
            return False
        return True

    def _drop_oldest(self, bound: Bound) -> None:
        # Readers see the gap in the sequence.
        cost = self._queue.popleft()[3]
        self.queued_bytes -= cost
        self._budget.used -= cost
        self._count_drop(bound)

    def _count_drop(self, bound: Bound) -> None:
        self.dropped += 1
        self._hub.dropped[bound].value += 1

    def _disconnect(self, bound: Bound) -> None:
        self.overflowed = True
        self.overflow_bound = bound
        self._hub.disconnected[bound].value += 1
        self._wake()

    def shed(self) -> None:
        """Give back queued bytes for the hub's shared bound: the oldest event under
        ``drop_oldest``; under ``disconnect``, the whole queue (it is disconnected)."""
        if self._overflow == "drop_oldest":
            self._drop_oldest("max_total_subscriber_bytes")
            return
        if not self.overflowed:
            self._disconnect("max_total_subscriber_bytes")
        self._budget.used -= self.queued_bytes
        self.queued_bytes = 0
        self._queue.clear()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Notice:
        while not self._queue:
            if self.overflowed:
                raise SubscriptionOverflow(self._overflow_message())
            if self.closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._notice()

    def _overflow_message(self) -> str:
        if self.overflow_bound == "max_queue":
            return f"subscriber fell more than {self._max} events behind and was disconnected"
        if self.overflow_bound == "max_queue_bytes":
            return f"subscriber fell more than {self.max_bytes} bytes behind and was disconnected"
        return (
            "subscribers together fell more than limits.max_total_subscriber_bytes "
            f"({self._budget.limit}) behind; this one, furthest behind, was disconnected"
        )

    async def next(self, timeout: float) -> Notice | None:  # noqa: ASYNC109 - a poll interval
        """The next notice, or None if none arrives within ``timeout`` seconds.

        Raises `SubscriptionOverflow` / `StopAsyncIteration` as iteration does.
        """
        if not self._queue and not self.overflowed and not self.closed:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            except TimeoutError:
                return None
            finally:
                self._waiter = None
        return await self.__anext__()

    def get_nowait(self) -> Notice | None:
        """The next queued notice, or None (for callers that poll)."""
        return self._notice() if self._queue else None

    def _notice(self) -> Notice:
        event, status, seq, cost = self._queue.popleft()
        self.queued_bytes -= cost
        self._budget.used -= cost
        gap = seq - self._read_seq - 1
        self._read_seq = seq
        return Notice(event, status, gap)

    async def __aenter__(self) -> Self:
        self._hub.add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Never closed and no longer referenced: give back its bytes and its place.
        # (``closed`` is unset when ``__init__`` refused its arguments.)
        if getattr(self, "closed", True):
            return
        if threading.get_ident() == self._thread:
            self.close()
        else:
            self.closed = True
            self._hub.bury(self._ref, self.queued_bytes)

    def close(self) -> None:
        """Stop receiving and free the queue; iteration ends after this."""
        if not self.closed:
            self.closed = True
            self._hub.remove(self)
            self._budget.used -= self.queued_bytes
            self.queued_bytes = 0
            self._queue.clear()
            self._wake()
