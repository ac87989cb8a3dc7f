"""The subscriptions of a bus scope: handing each processed event to the ones that
match it, the bound in bytes they all share, and the metrics they count in.

A `bridge.subscriptions.Subscription` queues and reads; the `Hub` of its bus scope
fans events out to it and holds the series it counts in (the bus's `Metrics`, so
two buses in one process keep their own). This module does not import
`bridge.subscriptions`: what it needs of a subscription is `Member`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal, Protocol

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
        self.members: list[Member] = []

    def make_room(self, size: int) -> bool:
        """Shed from the subscription holding the most bytes until ``size`` fits."""
        while self.used + size > self.limit:
            victim = max(self.members, key=_queued_bytes, default=None)
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
    """

    def __init__(self, metrics: Metrics, budget: SubscriberBudget | None = None) -> None:
        self.budget = shared = budget if budget is not None else SubscriberBudget()
        self.metrics = metrics
        self.subscriptions: list[Member] = []
        # Which subscriptions want a type: matching globs per event would cost
        # more than the queueing itself.
        self._by_type: dict[str, tuple[Member, ...]] = {}
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

    def add(self, subscription: Member) -> None:
        self.subscriptions.append(subscription)
        self.budget.members.append(subscription)
        self._by_type.clear()
        self._subscribers.inc()

    def remove(self, subscription: Member) -> None:
        try:
            self.subscriptions.remove(subscription)
        except ValueError:
            return
        self.budget.members.remove(subscription)
        self._by_type.clear()
        self._subscribers.dec()

    def _for_type(self, type_: str) -> tuple[Member, ...]:
        found = self._by_type.get(type_)
        if found is None:
            if len(self._by_type) >= 4096:
                self._by_type.clear()
            found = self._by_type[type_] = tuple(s for s in self.subscriptions if s.matches(type_))
        return found

    def publish(self, event: Event, status: Status) -> None:
        """Offer an event to every matching subscription (never waits)."""
        subscriptions = self._for_type(event.type)
        if subscriptions:
            cost = event_cost(event)
            for subscription in subscriptions:
                subscription.offer(event, status, cost)
