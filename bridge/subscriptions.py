"""Live subscriptions: ``async for`` over the events a bus processes.

Guarantees:
- a subscription sees only events whose processing finished after it was
  entered, in the order the bus finished them (FIFO per subscription);
- each subscriber has its own bounded queue, so a slow subscriber never slows
  the pipeline or other subscribers: on overflow it either loses its oldest
  queued events (``drop_oldest``; the next item it reads carries ``dropped``)
  or is disconnected (``disconnect``; it reads what was queued, then
  `SubscriptionOverflow`);
- with no subscribers, publishing an event costs one length check and keeps
  nothing;
- leaving the ``async with`` block frees the subscription at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Final, Literal, Self

import msgspec

from bridge.errors import BridgeError
from bridge.event import Event
from bridge.metrics import METRICS
from bridge.results import Status
from bridge.routing import compile_glob

Overflow = Literal["drop_oldest", "disconnect"]
OVERFLOW_POLICIES: Final = ("drop_oldest", "disconnect")


class SubscriptionOverflow(BridgeError):
    """The subscriber fell ``max_queue`` events behind under ``overflow="disconnect"``."""

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
    """An async iterator of `Notice` for event types matching any of ``patterns``."""

    def __init__(
        self, hub: Hub, patterns: Sequence[str], *, max_queue: int, overflow: Overflow
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
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
        self._max = max_queue
        self._overflow = overflow
        # (event, status, sequence number); a Notice is built only when read, and
        # a jump in the sequence is the count of events dropped before it.
        self._queue: deque[tuple[Event, Status, int]] = deque(maxlen=max_queue)
        self._seq = 0
        self._read_seq = 0
        self._waiter: asyncio.Future[None] | None = None
        self.dropped = 0
        self.overflowed = False
        self.closed = False

    def offer(self, event: Event, status: Status) -> None:
        """Queue an event without ever waiting (called by the hub)."""
        if self.closed or self.overflowed:
            return
        queue = self._queue
        self._seq += 1
        if len(queue) == self._max:
            if self._overflow == "disconnect":
                self.overflowed = True
                self._wake()
                return
            # The deque's maxlen discards the oldest; readers see the gap in the sequence.
            self.dropped += 1
            _DROPPED.value += 1
        queue.append((event, status, self._seq))
        if self._waiter is not None:
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Notice:
        while not self._queue:
            if self.overflowed:
                raise SubscriptionOverflow(
                    f"subscriber fell more than {self._max} events behind and was disconnected"
                )
            if self.closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._notice()

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
        event, status, seq = self._queue.popleft()
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

    def close(self) -> None:
        """Stop receiving and free the queue; iteration ends after this."""
        if not self.closed:
            self.closed = True
            self._hub.remove(self)
            self._queue.clear()
            self._wake()


class Hub:
    """The subscriptions of one bus scope."""

    def __init__(self) -> None:
        self.subscriptions: list[Subscription] = []
        # Which subscriptions want a type: matching globs per event would cost
        # more than the queueing itself.
        self._by_type: dict[str, tuple[Subscription, ...]] = {}

    def add(self, subscription: Subscription) -> None:
        self.subscriptions.append(subscription)
        self._by_type.clear()
        _SUBSCRIBERS.inc()

    def remove(self, subscription: Subscription) -> None:
        try:
            self.subscriptions.remove(subscription)
        except ValueError:
            return
        self._by_type.clear()
        _SUBSCRIBERS.dec()

    def _for_type(self, type_: str) -> tuple[Subscription, ...]:
        found = self._by_type.get(type_)
        if found is None:
            if len(self._by_type) >= 4096:
                self._by_type.clear()
            found = self._by_type[type_] = tuple(s for s in self.subscriptions if s.matches(type_))
        return found

    def publish(self, event: Event, status: Status) -> None:
        """Offer an event to every matching subscription (never waits)."""
        for subscription in self._for_type(event.type):
            subscription.offer(event, status)


_SUBSCRIBERS = METRICS.subscribers
_DROPPED = METRICS.subscription_dropped.child()
