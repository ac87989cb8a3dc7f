"""Publishing through a sink: coalescing, per-event outcomes, counting.

`Publisher` wraps one sink. Events submitted one at a time from concurrent
callers (HTTP requests, say) within one loop iteration are gathered into a
single ``publish_many`` call, so a network sink sends one producer batch
instead of one round trip per event. Every event still gets its own outcome.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from time import perf_counter

from bridge import tracing
from bridge.errors import SinkError, SinkUnavailable
from bridge.metrics import METRICS, Metrics
from bridge.results import Delivery
from bridge.sinks.base import Outgoing, Sink

log = logging.getLogger("bridge.delivery")

Outcome = Delivery | SinkError


class Publisher:
    """Publishes to one sink and records each outcome in the metrics.

    Guarantee: the returned list has exactly one entry per input, in input
    order; nothing raises out of `publish_many` but `CancelledError`.
    """

    def __init__(
        self, sink: Sink, *, coalesce: bool, max_batch: int = 1000, metrics: Metrics = METRICS
    ) -> None:
        self.sink = sink
        #: Where its outcomes are counted (the bus's).
        self.metrics = metrics
        self.name = sink.name
        self._coalesce = coalesce
        self._max_batch = max_batch
        self._pending: list[tuple[Outgoing, asyncio.Future[Outcome]]] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._ok = metrics.published.child(self.name, "ok")
        self._failed = metrics.published.child(self.name, "error")
        self._duration = metrics.publish_duration.child(self.name)
        self._batch_size = metrics.publish_batch_size.child(self.name)

    async def publish(self, item: Outgoing) -> Outcome:
        """Publish one event; concurrent calls share one ``publish_many``."""
        if not self._coalesce:
            return (await self.publish_many((item,)))[0]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._pending.append((item, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), self._max_batch):
            task = asyncio.ensure_future(self._send(pending[start : start + self._max_batch]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, pending: list[tuple[Outgoing, asyncio.Future[Outcome]]]) -> None:
        try:
            results = await self.publish_many([item for item, _ in pending])
        except BaseException as exc:
            for _, future in pending:
                if not future.done():
                    future.set_exception(exc)
            raise
        for (_, future), result in zip(pending, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def publish_many(self, items: Sequence[Outgoing]) -> list[Outcome]:
        """Publish a batch; one outcome per item, in order."""
        if not items:
            return []
        spans = None
        if tracing.TRACER is not None:
            items, spans = tracing.start_publish(self.sink, items)
        start = perf_counter()
        try:
            results = await self.sink.publish_many(items)
            if len(results) != len(items):
                raise RuntimeError(
                    f"sink {self.name!r} returned {len(results)} results for {len(items)} events"
                )
        except asyncio.CancelledError:
            raise
        except SinkError as exc:
            results = [exc] * len(items)
        except Exception as exc:
            log.exception("sink %s failed unexpectedly on a batch of %d", self.name, len(items))
            results = [
                SinkUnavailable(f"sink {self.name!r} failed: {type(exc).__name__}: {exc}")
            ] * len(items)
        duration = perf_counter() - start
        self._duration.observe(duration)
        if spans is not None:
            tracing.end_publish(spans, results, self._duration, duration)
        self._batch_size.observe(len(items))
        failures = [r for r in results if isinstance(r, SinkError)]
        if failures:
            self._failed.inc(len(failures))
            self._ok.inc(len(items) - len(failures))
            first = failures[0]
            for failure in failures:
                self.metrics.error("publish", failure.code)
            log.warning(
                "publishing to sink %s failed for %d of %d events: %s (%s, retriable=%s)",
                self.name,
                len(failures),
                len(items),
                first.message,
                first.code,
                first.retriable,
            )
        else:
            self._ok.inc(len(items))
        return results

    async def wait_idle(self) -> None:
        """Wait until every coalesced batch in flight has its outcome."""
        while self._tasks or self._pending:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            else:
                await asyncio.sleep(0)
