"""The background deliverer: publishes spooled events, retries, dead-letters.

`Deliverer` runs one `bridge.lane.Lane` per sink, each reading that sink's
records from the spool in order and publishing them in batches through the
sink's `Publisher`, while keeping a bounded window of them in memory
(``delivery.window_bytes``). A retriable failure is retried after the
`bridge.retry.RetryPolicy`'s backoff (``delivery.retry``); a non-retriable one,
or one out of attempts or age, is dead-lettered (`bridge.deadletter`): to the
route's ``dead_letter`` destination, or kept in the spool's local dead-letter
area for ``evbridge spool replay-dead-letters``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping, Sequence

from bridge.config import RetryConfig, RouteConfig
from bridge.deadletter import DeadLetterRoute, dead_letter_routes
from bridge.delivery import Publisher
from bridge.lane import Lane, LaneSettings
from bridge.metrics import METRICS, Metrics
from bridge.retry import RetryPolicy
from bridge.sinks.base import RouteOptions
from bridge.spool import codec
from bridge.spool.store import Spool

log = logging.getLogger("bridge.deliverer")


class Deliverer:
    """Delivers what the spool holds, one lane per sink; `start` / `stop`."""

    def __init__(
        self,
        spool: Spool,
        publishers: Mapping[str, Publisher],
        route_types: Mapping[str, type[RouteOptions]],
        routes: Sequence[RouteConfig],
        retry: RetryConfig,
        *,
        batch_size: int = 1000,
        window: int = 4000,
        window_bytes: int = 16 * 1024 * 1024,
        rng: random.Random | None = None,
        metrics: Metrics = METRICS,
    ) -> None:
        self.spool = spool
        self.publishers = publishers
        #: Where its lanes count retries, dead letters and errors (the bus's).
        self.metrics = metrics
        self._dead_routes = dead_letter_routes(routes, publishers)
        #: What every lane gets (a lane holds no reference to the deliverer).
        self.settings = LaneSettings(
            spool=spool,
            # Records read back from files are validated and re-routed by the current routes.
            decoder=codec.Decoder(route_types, routes, metrics=metrics),
            policy=RetryPolicy(retry, rng),
            metrics=metrics,
            batch_size=batch_size,
            window=max(window, batch_size),
            window_bytes=window_bytes,
            dead_letter_route=self.dead_letter_route,
            made_progress=self.made_progress,
        )
        self.lanes: dict[str, Lane] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._progress = asyncio.Event()

    def dead_letter_route(self, route: str) -> DeadLetterRoute | None:
        """Where ``route``'s undeliverable events go, if it names a ``dead_letter``."""
        return self._dead_routes.get(route)

    def start(self) -> None:
        """Start a lane for every configured sink and every sink the spool still holds
        records for (a sink since removed from the config dead-letters them locally).
        Calling it again starts lanes only for sinks that have none."""
        for sink in (*self.publishers, *self.spool.sinks()):
            if sink in self.lanes:
                continue
            lane = Lane(self.settings, sink, self.publishers.get(sink))
            self.lanes[sink] = lane
            self._tasks.append(
                asyncio.create_task(self._supervise(lane), name=f"evbridge-deliver-{sink}")
            )

    async def _supervise(self, lane: Lane) -> None:
        """Run a lane; an unexpected error is logged and counted, and the lane goes on."""
        while True:
            try:
                await lane.run()
            except Exception as exc:
                self.metrics.error("delivery", type(exc).__name__)
                log.exception("delivery to sink %s failed unexpectedly; resuming in 1s", lane.sink)
                await asyncio.sleep(1.0)

    async def drain(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until nothing is pending (True) or ``timeout`` seconds pass (False)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self.spool.pending_events() > 0:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            progress = asyncio.ensure_future(self._progress.wait())
            try:
                await asyncio.wait({progress}, timeout=min(remaining or 0.25, 0.25))
            finally:
                progress.cancel()
        return True

    def made_progress(self) -> None:
        """Called by a lane after it settled records: wakes `stop`'s drain wait."""
        self._progress.set()
        self._progress = asyncio.Event()

    async def stop(self, grace_s: float = 0.0) -> None:
        """Give the lanes up to ``grace_s`` to deliver what is pending, then stop them.

        What is still pending stays in the spool for the next start.
        """
        if not self._tasks:
            return
        if grace_s > 0:
            drained = await self.drain(grace_s)
            if not drained:
                log.warning(
                    "stopping delivery with %d spooled events pending (delivered on next start)",
                    self.spool.pending_events(),
                )
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for lane in self.lanes.values():
            lane.cursor.close()
        self._tasks.clear()
        self.lanes.clear()

    def oldest_age_s(self) -> dict[str, float]:
        """Per sink: seconds since the oldest undelivered event was accepted (0: none)."""
        now = time.time_ns()
        return {sink: lane.oldest_age_s(now) for sink, lane in self.lanes.items()}
