"""`KafkaLink`: one started producer and the lanes feeding it, as the supervisor sees it.

The link owns the batches in flight on its producer: `append` puts a record in its
partition's open batch (starting the partition's drain task and the watchdog), the
watchdog bounds how long batches wait, and `close` gives every batch an outcome.

A batch unanswered after `FIRST_CHECK_S` makes the link probe the broker (through
the ``health`` callable, the supervisor's probe): if the broker does not answer,
every pending batch fails (retriable) and the sink is down, so a broker that went
away fails publishes in about a second instead of ``request_timeout_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

from bridge.errors import SinkUnavailable
from bridge.sinks.base import Health
from bridge.sinks.kafka import _aiokafka as aio
from bridge.sinks.kafka.batches import Batch, Lane, Record, drain
from bridge.sinks.kafka.errors import ConnectionFailed

#: A batch still unanswered after this long makes the link probe the broker.
FIRST_CHECK_S: Final = 0.5
_WATCHDOG_TICK_S: Final = 0.1


class KafkaLink:
    """A started producer and the lanes feeding it.

    ``name`` is the sink's (for errors and task names); ``request_timeout_ms`` bounds
    a batch's wait and the close while the broker answers, ``health_timeout_s`` the
    close while it does not and how often the watchdog probes; ``linger_s`` is how
    long a drain task lets a batch fill. ``connected()`` says whether the broker is
    known to answer; ``health()`` probes it now (and marks the sink down or up).
    """

    def __init__(
        self,
        producer: Any,
        *,
        name: str,
        request_timeout_ms: int,
        health_timeout_s: float,
        linger_s: float,
        connected: Callable[[], bool],
        health: Callable[[], Awaitable[Health]],
    ) -> None:
        self.producer = producer
        self.name = name
        self._request_timeout_ms = request_timeout_ms
        self._timeout_s = request_timeout_ms / 1000
        self._health_timeout_s = health_timeout_s
        self._linger_s = linger_s
        self._connected = connected
        self._health = health
        self.lanes: dict[tuple[str, int], Lane] = {}
        self.pending: set[Batch] = set()  # batches created and not answered yet
        self.watchdog: asyncio.Task[None] | None = None  # runs while batches are pending

    async def lost(self) -> str:
        task = aio.sender_task(self.producer)
        if task is None:
            await asyncio.Future()  # never: without a sender there is nothing to watch
        else:
            await asyncio.wait([task])
        return "the producer's sender task ended"

    async def probe(self) -> None:
        if aio.sender_dead(self.producer):
            raise ConnectionFailed("the producer's sender task ended")
        await aio.fetch_metadata(self.producer)

    async def close(self) -> None:
        """Let queued batches go out (bounded: ``request_timeout_ms``, or
        ``health_timeout_ms`` when the broker is known to be away), then stop the
        producer; every batch still pending fails retriably."""
        with contextlib.suppress(Exception):
            if self.watchdog is not None:
                self.watchdog.cancel()
                await asyncio.gather(self.watchdog, return_exceptions=True)
            grace = self._timeout_s if self._connected() else self._health_timeout_s
            drains = [lane.task for lane in self.lanes.values() if lane.task is not None]
            if drains:
                await asyncio.wait(drains, timeout=grace)
            await aio.close_producer(self.producer, grace)
            for lane in self.lanes.values():
                if lane.task is not None:
                    lane.task.cancel()
        gone = SinkUnavailable(f"kafka sink {self.name!r} stopped before the broker answered")
        for batch in list(self.pending):
            batch.fail(gone)

    def append(self, topic: str, partition: int, record: Record) -> tuple[Batch, int]:
        """Add a record to its partition's open batch; returns (batch, index in batch)."""
        tp = (topic, partition)
        lane = self.lanes.get(tp)
        if lane is None:
            lane = self.lanes[tp] = Lane()
        batch = lane.open
        if batch is not None:
            index = batch.append(record)
            if index is not None:
                return batch, index
            lane.full.append(batch)
        batch = lane.open = Batch(self.producer.create_batch(), topic, partition, self.pending)
        index = batch.append(record)
        assert index == 0, "an empty batch takes a record of any size"
        self.pending.add(batch)
        if self.watchdog is None or self.watchdog.done():
            self.watchdog = asyncio.ensure_future(self._watchdog())
        if lane.task is None:
            lane.task = asyncio.ensure_future(
                drain(self.producer, self.lanes, tp, lane, self._linger_s, self.name)
            )
        return batch, index

    async def _watchdog(self) -> None:
        """Bound how long batches wait for the broker, while any are pending.

        A batch unanswered after `FIRST_CHECK_S` triggers a health probe: if the
        broker does not answer it, every pending batch fails now (retriable) and
        the sink is down. A batch older than ``request_timeout_ms`` fails as a
        timeout (an idempotent producer would otherwise retry it forever).
        """
        loop = asyncio.get_running_loop()
        checked = float("-inf")  # when the broker was last probed
        while self.pending:
            await asyncio.sleep(_WATCHDOG_TICK_S)
            now = loop.time()
            oldest = min((b.created for b in self.pending), default=now)
            if now - oldest < FIRST_CHECK_S or now - checked < self._health_timeout_s:
                continue
            health = await self._health()
            checked = loop.time()
            if not health.ok:
                error = SinkUnavailable(
                    f"the broker stopped answering ({health.detail}); the event may still arrive"
                )
                for batch in list(self.pending):
                    batch.fail(error)
                continue
            timeout = SinkUnavailable(
                f"no acknowledgement within request_timeout_ms "
                f"({self._request_timeout_ms} ms); the event may still arrive",
                code="sink_timeout",
            )
            for batch in list(self.pending):
                if checked - batch.created > self._timeout_s:
                    batch.fail(timeout)
