"""Durable delivery: the spool and its background deliverer, for one bus.

`DurableDelivery` owns the `Spool` and the `Deliverer`; `append` writes events
to the spool (each answered ``spooled`` once fsync'd). Which events come here
is decided per route by `bridge.dispatch`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence

import msgspec

from bridge import tracing
from bridge.config import Config
from bridge.deliverer import Deliverer
from bridge.delivery import Outcome, Publisher
from bridge.errors import BridgeError, SpoolFull
from bridge.gauges import SpoolGauges
from bridge.metrics import METRICS, Metrics

# Re-exported: the server imports the request's preference from here.
from bridge.prefer import Preference, parse_prefer
from bridge.sinks.base import Outgoing, get_sink_type
from bridge.spool import codec
from bridge.spool.store import Spool
from bridge.spool.throttle import Throttled

__all__ = ["DurableDelivery", "Preference", "Result", "Spooled", "parse_prefer"]

log = logging.getLogger("bridge.durable")


class Spooled(msgspec.Struct, frozen=True):
    """An event fsync'd to the spool; the deliverer publishes it to ``destination``."""

    sink: str
    destination: str


Result = Outcome | Spooled | BridgeError


class DurableDelivery:
    """The spool and its deliverer for one bus; `start` / `stop` with the bus."""

    def __init__(
        self,
        config: Config,
        publishers: Mapping[str, Publisher],
        *,
        metrics: Metrics = METRICS,
    ) -> None:
        settings = config.delivery
        self._metrics = metrics
        self._durable_routes = {
            r.name for r in config.routes if (r.delivery or settings.mode) == "durable"
        }
        sync_sinks = {r.sink for r in config.routes if r.name not in self._durable_routes}
        spooled_sinks = {r.sink for r in config.routes if r.name in self._durable_routes} | {
            r.dead_letter.sink for r in config.routes if r.dead_letter is not None
        }
        self._behind_spool = frozenset(spooled_sinks - sync_sinks)
        route_types = {s.name: get_sink_type(s.type).route for s in config.sinks}
        self.spool = Spool(
            settings.spool_dir,
            head=codec.head,
            sink_prefix=codec.sink_prefix,
            max_bytes=settings.max_spool_bytes,
            tail_bytes=settings.tail_bytes,
            metrics=metrics,
        )
        self.deliverer = Deliverer(
            self.spool,
            publishers,
            route_types,
            config.routes,
            settings.retry,
            window_bytes=settings.window_bytes,
            metrics=metrics,
        )
        self._was_full = False
        # Every event is refused while the disk cannot write: log that once per interval.
        self._refusals = Throttled(log, logging.ERROR)

    @staticmethod
    def needed(config: Config) -> bool:
        """True when some route delivers durably (by ``delivery.mode`` or its own ``delivery``).

        Without one there is no spool, and ``Prefer: respond-async`` is ignored.
        """
        mode = config.delivery.mode
        return any((r.delivery or mode) == "durable" for r in config.routes)

    async def start(self) -> None:
        await self.spool.open()
        self.deliverer.start()
        self._metrics.spool_gauges.add(self.gauges)

    async def stop(self, grace_s: float) -> None:
        """Flush what was accepted, give delivery ``grace_s`` to drain, then close the spool.

        Cancelled midway (a shutdown deadline), it still stops delivery and closes the spool.
        """
        self._metrics.spool_gauges.discard(self.gauges)
        try:
            await self.spool.flush()
            await self.deliverer.stop(grace_s)
        finally:
            await asyncio.shield(self._close())

    async def _close(self) -> None:
        await self.deliverer.stop()
        await self.spool.close()

    def sinks_behind_spool(self) -> frozenset[str]:
        """Sinks that only the deliverer publishes to (no route reaches them in sync mode):
        while one is down, events still get accepted, so readiness does not depend on it."""
        return self._behind_spool

    @property
    def full(self) -> bool:
        """True while new events are refused for lack of space (readiness is 503)."""
        return self.spool.full

    @property
    def write_error(self) -> str | None:
        """Why the spool cannot write to its disk right now (readiness is 503), or None."""
        return self.spool.write_error

    # --- spooling ---------------------------------------------------------------------

    def is_durable_route(self, route: str) -> bool:
        """True when ``route`` is durable by config (its ``delivery``, or ``delivery.mode``)."""
        return route in self._durable_routes

    async def append(self, sink: str, items: Sequence[Outgoing]) -> list[Result]:
        """Spool ``items`` for ``sink``: one result per item, in order — `Spooled` once
        fsync'd, or the error (a full spool refuses the whole call)."""
        if not items:
            return []
        now = time.time_ns()
        results: list[Result] = []
        payloads: list[bytes] = []
        decoded: list[codec.Decoded] = []
        for item in items:
            try:
                payloads.append(codec.encode(sink, item, now))
            except BridgeError as exc:
                results.append(exc)
            else:
                decoded.append(codec.Decoded(sink, item, now))
                results.append(Spooled(sink, item.options.destination(sink)))
        span = tracing.start_spool_write(sink, items) if tracing.TRACER is not None else None
        try:
            await self.spool.append([sink] * len(payloads), payloads, decoded)
        except BridgeError as exc:
            if span is not None:
                tracing.end_span(span, exc)
            self._note_refusal(exc)
            return [exc if isinstance(r, Spooled) else r for r in results]
        if span is not None:
            tracing.end_span(span)
        if self._was_full:
            self._was_full = False
            log.info("the spool accepts events again")
        self._refusals.reset()
        return results

    def _note_refusal(self, exc: BridgeError) -> None:
        self._metrics.error("spool", exc.code)
        if isinstance(exc, SpoolFull):
            if not self._was_full:
                self._was_full = True
                log.warning("%s (readiness goes 503 until space comes back)", exc.message)
        else:
            self._refusals.note("spooling failed, events refused with 503: %s", exc.message)

    async def replay_dead_letters(self, sink: str | None = None) -> int:
        """Move the local dead letters (of ``sink``, or all) back to be delivered again."""
        moved = await self.spool.replay_dead_letters(codec.revive, sink)
        self.deliverer.start()  # a lane for any sink that had none
        return moved

    # --- introspection ---------------------------------------------------------------

    def gauges(self) -> SpoolGauges:
        status = self.spool.status()
        return SpoolGauges(
            events={sink: b.events for sink, b in status.pending.items()},
            bytes={sink: b.bytes for sink, b in status.pending.items()},
            oldest_age_s=self.deliverer.oldest_age_s(),
            dead_letters={sink: b.events for sink, b in status.dead.items()},
            disk_bytes=status.disk_bytes,
            max_bytes=status.max_bytes,
            full=status.full,
        )

    def describe(self) -> dict[str, object]:
        """For ``/readyz`` and ``/v1/info``: what waits in the spool."""
        status = self.spool.status()
        ages = self.deliverer.oldest_age_s()
        return {
            "pending": {
                sink: {
                    "events": b.events,
                    "bytes": b.bytes,
                    "oldest_age_s": round(ages.get(sink, 0.0), 3),
                }
                for sink, b in status.pending.items()
                if b.events
            },
            "dead_letters": {sink: b.events for sink, b in status.dead.items() if b.events},
            "disk_bytes": status.disk_bytes,
            "max_bytes": status.max_bytes,
            "full": status.full,
            "write_error": self.spool.write_error,
        }
