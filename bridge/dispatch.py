"""Where a routed event goes next: published now (sync) or spooled (durable).

Every route has one `RouteDelivery`, built from the config. For each event it
picks a `Channel` from the route's own setting and the request's `Preference`;
the bus groups a batch's events by channel and hands each group to it, so the
bus itself never asks which mode is in force.

The rule for ``Prefer`` (with ``delivery.allow_override: true``; otherwise it
is ignored) depends on the event's own route and on nothing else:

- ``respond-async``: spooled, answered ``spooled`` (202), where the bus has a
  spool (some route is durable). A bus without a spool publishes it now, and
  the result says so (``preference_not_applied``).
- ``wait=N``: published now, whatever the route's ``delivery``, and the answer
  waits at most N seconds for the broker. What is not confirmed by then is
  spooled (202) where the bus has a spool, else rejected ``sink_timeout``
  (503, retriable). The publish goes on either way, so the event can arrive
  twice if the caller sends it again.

With ``delivery.allow_override: false`` a request cannot choose: ``wait=N`` is
ignored, and so is ``respond-async`` on a durable route (it is spooled anyway);
``respond-async`` on a sync route is refused (`PreferenceRefused`), since
ignoring it would answer slower than the caller asked, and silently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from bridge.config import Config
from bridge.delivery import Outcome, Publisher
from bridge.durable import DurableDelivery, Result
from bridge.errors import PreferenceRefused, SinkUnavailable
from bridge.prefer import Preference
from bridge.sinks.base import Outgoing

log = logging.getLogger("bridge.dispatch")


class Channel(Protocol):
    """Delivers events of one sink in one mode; one result per item, in order."""

    def deliver(self, items: Sequence[Outgoing], /) -> Awaitable[Sequence[Result]]: ...

    def deliver_one(self, item: Outgoing, /) -> Awaitable[Result]: ...


class Publish:
    """Sync: publish now and answer with the broker's outcome."""

    __slots__ = ("deliver", "deliver_one", "publisher")

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        # The publisher's own methods, bound once: no extra call on the hot path.
        self.deliver: Callable[[Sequence[Outgoing]], Awaitable[Sequence[Result]]]
        self.deliver = publisher.publish_many
        #: Single events from concurrent requests share one sink batch (coalescing).
        self.deliver_one: Callable[[Outgoing], Awaitable[Result]] = publisher.publish


class Spool:
    """Durable: append to the spool; the deliverer publishes in the background."""

    __slots__ = ("durable", "sink")

    def __init__(self, durable: DurableDelivery, sink: str) -> None:
        self.durable = durable
        self.sink = sink

    async def deliver(self, items: Sequence[Outgoing]) -> Sequence[Result]:
        return await self.durable.append(self.sink, items)

    async def deliver_one(self, item: Outgoing) -> Result:
        return (await self.durable.append(self.sink, (item,)))[0]


class BoundedPublish:
    """Sync with ``Prefer: wait=N``: what the broker has not confirmed within
    ``wait_s`` goes to ``fallback`` (the spool), or is rejected without one."""

    __slots__ = ("fallback", "publisher", "wait_s")

    def __init__(self, publisher: Publisher, wait_s: float, fallback: Spool | None) -> None:
        self.publisher = publisher
        self.wait_s = wait_s
        self.fallback = fallback

    # Equal channels are one group in a batch: one publish_many per sink and bound.
    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, BoundedPublish)
            and other.publisher is self.publisher
            and other.wait_s == self.wait_s
        )

    def __hash__(self) -> int:
        return hash((id(self.publisher), self.wait_s))

    async def deliver(self, items: Sequence[Outgoing]) -> Sequence[Result]:
        if not items:
            return []
        task = asyncio.ensure_future(self.publisher.publish_many(items))
        done, _ = await asyncio.wait({task}, timeout=self.wait_s)
        if task in done:
            return task.result()
        task.add_done_callback(_consume)
        sink = self.publisher.name
        if self.fallback is None:
            self.publisher.metrics.errors.labels("publish", "sink_timeout").inc(len(items))
            log.warning(
                "no confirm from sink %s within Prefer: wait=%g; %d events answered sink_timeout",
                sink,
                self.wait_s,
                len(items),
            )
            error = SinkUnavailable(
                f"sink {sink!r} did not confirm within Prefer: wait={self.wait_s:g}; "
                "the publish goes on, so sending it again may duplicate it",
                code="sink_timeout",
            )
            return [error] * len(items)
        log.info(
            "no confirm from sink %s within Prefer: wait=%g; spooling %d events instead",
            sink,
            self.wait_s,
            len(items),
        )
        return await self.fallback.deliver(items)

    async def deliver_one(self, item: Outgoing) -> Result:
        return (await self.deliver((item,)))[0]


class Refuse:
    """Every event rejected with one error (a preference the config does not allow)."""

    __slots__ = ("error",)

    def __init__(self, error: PreferenceRefused) -> None:
        self.error = error

    async def deliver(self, items: Sequence[Outgoing]) -> Sequence[Result]:
        return [self.error] * len(items)

    async def deliver_one(self, item: Outgoing) -> Result:
        return self.error


class RouteDelivery:
    """One route's delivery: which `Channel` an event of it takes, given its request's
    `Preference` (the rule is in the module docstring)."""

    __slots__ = ("_allow_override", "_default", "_publish", "_refuse", "_spool")

    def __init__(
        self,
        publish: Publish,
        spool: Spool | None,
        *,
        durable: bool,
        allow_override: bool,
        route: str = "",
    ) -> None:
        self._publish = publish
        self._spool = spool
        self._default: Channel = spool if durable and spool is not None else publish
        self._allow_override = allow_override
        self._refuse = Refuse(
            PreferenceRefused(
                f"Prefer: respond-async: route {route!r} delivers synchronously and "
                "delivery.allow_override is false, so a request cannot make it durable; "
                "send it without Prefer: respond-async"
            )
        )

    def channel(self, preference: Preference | None) -> Channel:
        if preference is None:
            return self._default
        if not self._allow_override:
            if preference.mode == "durable" and self._default is self._publish:
                return self._refuse
            return self._default
        if preference.mode == "durable":
            return self._spool if self._spool is not None else self._publish
        if preference.wait_s is None:
            return self._publish
        return BoundedPublish(self._publish.publisher, preference.wait_s, self._spool)


class Dispatch:
    """The route deliveries of one bus and the spool behind them (if any route is durable).

    `start` / `stop` with the bus. ``durable`` is None without a spool.
    """

    def __init__(
        self, config: Config, publishers: Mapping[str, Publisher], durable: DurableDelivery | None
    ) -> None:
        self.durable = durable
        #: Whether a request's ``Prefer`` may choose the mode (``delivery.allow_override``).
        self.honours_prefer = config.delivery.allow_override
        publish = {name: Publish(p) for name, p in publishers.items()}
        spools = {name: Spool(durable, name) for name in publishers} if durable is not None else {}
        self.routes: dict[str, RouteDelivery] = {
            r.name: RouteDelivery(
                publish[r.sink],
                spools.get(r.sink),
                durable=durable is not None and durable.is_durable_route(r.name),
                allow_override=self.honours_prefer,
                route=r.name,
            )
            for r in config.routes
        }

        #: Each route's channel when the request states no preference (most events).
        self.defaults: dict[str, Channel] = {
            name: route.channel(None) for name, route in self.routes.items()
        }

    def channel(self, item: Outgoing, preference: Preference | None) -> Channel:
        """The channel ``item`` takes, by its route and the request's preference."""
        return self.routes[item.route].channel(preference)

    async def start(self) -> None:
        if self.durable is not None:
            await self.durable.start()

    async def stop(self, grace_s: float) -> None:
        if self.durable is not None:
            await self.durable.stop(grace_s)


def _consume(task: asyncio.Future[list[Outcome]]) -> None:
    if not task.cancelled():
        task.exception()
