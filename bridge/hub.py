"""The subscriptions of a bus scope: handing each processed event to the ones that
match it, the bound in bytes they all share, and the metrics they count in.

A `bridge.subscriptions.Subscription` queues and reads; the `Hub` of its bus scope
fans events out to it and holds the series it counts in (the bus's `Metrics`, so
two buses in one process keep their own). This module does not import
`bridge.subscriptions`: what it needs of a subscription is `Member`.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Literal, Protocol

from bridge.event import Event
from bridge.fastmetrics import CounterChild
from bridge.memory import ByteBudget, event_cost
from bridge.metrics import Metrics
from bridge.results import Status

#: Which bound made a subscriber lose events: the label of the overflow metrics.
Bound = Literal["max_queue", "max_queue_bytes", "max_total_subscriber_bytes"]
BOUNDS: Final[tuple[Bound, ...]] = ("max_queue", "max_queue_bytes", "max_total_subscriber_bytes")
#: Defaults of `bridge.config.LimitsConfig` (for a `Hub` built without a config).
DEFAULT_QUEUE_BYTES: Final = 16 * 1024 * 1024
DEFAULT_TOTAL_BYTES: Final = 64 * 1024 * 1024


class Member(Protocol):
    """What the hub and the budget use of a subscription (`bridge.subscriptions.Subscription`)."""

    #: Set by `Hub.add`: how the hub holds it (weakly), so it can be found and removed.
    _ref: weakref.ref[Any] | None

    @property
    def closed(self) -> bool:
        """Closed subscriptions are never added (again)."""

    @property
    def queued_bytes(self) -> int:
        """Bytes (`bridge.memory.event_cost`) of what it has queued, charged to the budget."""

    @property
    def matches(self) -> Callable[[str], bool]:
        """Whether it wants events of a type."""

    def offer(self, event: Event, status: Status, cost: int | None = None) -> None:
        """Queue an event (``cost``: its `event_cost`) without ever waiting."""

    def shed(self) -> None:
        """Give back queued bytes for the shared bound."""


class SubscriberBudget(ByteBudget):
    """The bound in bytes that all subscriptions of a bus and its scopes share
    (``limits.max_total_subscriber_bytes``), and each one's default
    (``limits.max_subscriber_bytes``)."""

    __slots__ = ("members", "queue_bytes")

    def __init__(
        self, limit: int = DEFAULT_TOTAL_BYTES, queue_bytes: int = DEFAULT_QUEUE_BYTES
    ) -> None:
        super().__init__(limit)
        self.queue_bytes = queue_bytes
        #: The subscriptions sharing it, held weakly (`Hub`).
        self.members: list[weakref.ref[Member]] = []

    def make_room(self, size: int) -> bool:
        """Shed from the subscription holding the most bytes until ``size`` fits."""
        while self.used + size > self.limit:
            live = [s for s in (ref() for ref in self.members) if s is not None]
            victim = max(live, key=_queued_bytes, default=None)
            if victim is None or not victim.queued_bytes:
                return False
            victim.shed()
        return True


def _queued_bytes(subscription: Member) -> int:
    return subscription.queued_bytes


class Hub:
    """The subscriptions of one bus scope; ``budget`` may be shared with other scopes.

    ``metrics`` are the bus's: the subscription series (``evbridge_subscribers``,
    ``evbridge_subscription_*``) are counted there, so each bus keeps its own.

    Subscriptions are held weakly: whoever subscribed holds the subscription, and
    one dropped unclosed is collected and closes itself
    (`bridge.subscriptions.Subscription.__del__`), or, collected off the loop's
    thread, is `bury`-ed and freed on the loop.
    """

    def __init__(self, metrics: Metrics, budget: SubscriberBudget | None = None) -> None:
        self.budget = shared = budget if budget is not None else SubscriberBudget()
        self.metrics = metrics
        #: Its subscriptions, weakly (empty: publishing costs one length check).
        self.refs: list[weakref.ref[Member]] = []
        #: Subscriptions collected off the loop's thread, and their queued bytes.
        self.graveyard: deque[tuple[weakref.ref[Member], int]] = deque()
        # Which subscriptions want a type: matching globs per event would cost
        # more than the queueing itself.
        self._by_type: dict[str, tuple[weakref.ref[Member], ...]] = {}
        self._subscribers = metrics.subscribers
        #: Per bound, events dropped (``drop_oldest``) and subscribers disconnected.
        self.dropped: Final[dict[Bound, CounterChild]] = {
            bound: metrics.subscription_dropped.child(bound) for bound in BOUNDS
        }
        self.disconnected: Final[dict[Bound, CounterChild]] = {
            bound: metrics.subscription_disconnected.child(bound) for bound in BOUNDS
        }
        # The gauge reads the budget, which the scopes of a bus share: a scope's hub
        # sets the same reading again.
        metrics.subscription_queued_bytes.set_function(lambda: float(shared.used))

    @property
    def subscriptions(self) -> list[Member]:
        """The live subscriptions, in the order they were added."""
        return [s for s in (ref() for ref in self.refs) if s is not None]

    def bury(self, ref: weakref.ref[Any] | None, queued_bytes: int) -> None:
        """A subscription collected off the loop's thread: freed on the loop, at the next
        `add`, `remove` or `publish` (a deque append is safe from any thread)."""
        if ref is not None:
            self.graveyard.append((ref, queued_bytes))

    def _drain(self) -> None:
        while self.graveyard:
            ref, queued_bytes = self.graveyard.popleft()
            if ref in self.refs:
                self.refs.remove(ref)
                self.budget.members.remove(ref)
                self.budget.used -= queued_bytes
                self._by_type.clear()
                self._subscribers.dec()

    def add(self, subscription: Member) -> None:
        """Start offering events to ``subscription``; a no-op if it already is added."""
        if self.graveyard:
            self._drain()
        if subscription._ref is not None or subscription.closed:
            return
        ref: weakref.ref[Member] = weakref.ref(subscription)
        subscription._ref = ref
        self.refs.append(ref)
        self.budget.members.append(ref)
        self._by_type.clear()
        self._subscribers.inc()

    def remove(self, subscription: Member) -> None:
        """Stop offering events to ``subscription``; a no-op if it is not added."""
        if self.graveyard:
            self._drain()
        ref = subscription._ref
        if ref is None:
            return
        try:
            self.refs.remove(ref)
        except ValueError:
            return
        self.budget.members.remove(ref)
        self._by_type.clear()
        self._subscribers.dec()

    def _for_type(self, type_: str) -> tuple[weakref.ref[Member], ...]:
        found = self._by_type.get(type_)
        if found is None:
            if len(self._by_type) >= 4096:
                self._by_type.clear()
            found = self._by_type[type_] = tuple(
                ref
                for ref, s in ((r, r()) for r in self.refs)
                if s is not None and s.matches(type_)
            )
        return found

    def publish(self, event: Event, status: Status) -> None:
        """Offer an event to every matching subscription (never waits)."""
        if self.graveyard:
            self._drain()
        refs = self._for_type(event.type)
        if refs:
            cost = event_cost(event)
            for ref in refs:
                subscription = ref()
                if subscription is not None:
                    subscription.offer(event, status, cost)
