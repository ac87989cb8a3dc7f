"""Durable delivery as the bus sees it: which events are spooled, and the spooling.

`DurableDelivery` owns the `Spool` and the `Deliverer`. The bus hands it every
routed notification event; it decides per event, from the request's
``Prefer`` header (when ``delivery.allow_override``), the route's
``delivery`` and the global ``delivery.mode``, whether to publish now (sync)
or append to the spool (durable: the answer is ``spooled`` once fsync'd).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Final, Literal

import msgspec

from bridge.config import Config
from bridge.deliverer import Deliverer
from bridge.delivery import Outcome, Publisher
from bridge.errors import BridgeError, SpoolFull
from bridge.metrics import METRICS, SpoolGauges
from bridge.sinks.base import Outgoing, get_sink_type
from bridge.spool import codec
from bridge.spool.store import Spool
from bridge.spool.throttle import Throttled

log = logging.getLogger("bridge.durable")

Mode = Literal["sync", "durable"]
_MAX_WAIT_S: Final = 3600.0


class Preference(msgspec.Struct, frozen=True):
    """A request's choice of delivery mode (from ``Prefer``); ``wait_s`` bounds a sync wait."""

    mode: Mode
    wait_s: float | None = None


def parse_prefer(header: str | None) -> Preference | None:
    """RFC 7240 ``Prefer``: ``respond-async`` → durable, ``wait=N`` (alone) → sync.

    Unknown preferences and malformed values are ignored, as the RFC asks.
    """
    if not header:
        return None
    respond_async = False
    wait: float | None = None
    for part in header.split(","):
        token = part.split(";", 1)[0].strip()
        name, _, value = token.partition("=")
        name = name.strip().lower()
        if name == "respond-async":
            respond_async = True
        elif name == "wait":
            try:
                seconds = float(value.strip().strip('"'))
            except ValueError:
                continue
            if 0 <= seconds <= _MAX_WAIT_S:
                wait = seconds
    if respond_async:
        return Preference("durable", wait)
    if wait is not None:
        return Preference("sync", wait)
    return None


class Spooled(msgspec.Struct, frozen=True):
    """An event fsync'd to the spool; the deliverer publishes it to ``destination``."""

    sink: str
    destination: str


Result = Outcome | Spooled | BridgeError


class DurableDelivery:
    """The spool and its deliverer for one bus; `start` / `stop` with the bus."""

    def __init__(self, config: Config, publishers: Mapping[str, Publisher]) -> None:
        settings = config.delivery
        self.allow_override = settings.allow_override
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
        )
        self.deliverer = Deliverer(
            self.spool,
            publishers,
            route_types,
            config.routes,
            settings.retry,
            window_bytes=settings.window_bytes,
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
        METRICS.spool_gauges.source = self.gauges

    async def stop(self, grace_s: float) -> None:
        """Flush what was accepted, give delivery ``grace_s`` to drain, then close the spool.

        Cancelled midway (a shutdown deadline), it still stops delivery and closes the spool.
        """
        if METRICS.spool_gauges.source == self.gauges:
            METRICS.spool_gauges.source = None
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

    def is_durable(self, route: str, preference: Preference | None) -> bool:
        if preference is not None and self.allow_override:
            return preference.mode == "durable"
        return route in self._durable_routes

    def _wait_s(self, preference: Preference | None) -> float | None:
        """How long a sync publish may wait for its confirm (``Prefer: wait``), if bounded."""
        return None if preference is None or not self.allow_override else preference.wait_s

    @property
    def full(self) -> bool:
        """True while new events are refused for lack of space (readiness is 503)."""
        return self.spool.full

    @property
    def write_error(self) -> str | None:
        """Why the spool cannot write to its disk right now (readiness is 503), or None."""
        return self.spool.write_error

    # --- delivering -------------------------------------------------------------------

    async def deliver(
        self,
        sink: str,
        items: Sequence[Outgoing],
        publisher: Publisher,
        preference: Preference | None,
    ) -> list[Result]:
        """One result per item, in order: spooled or published, as each one's mode says."""
        durable = [self.is_durable(item.route, preference) for item in items]
        if all(durable):
            return await self._spool(sink, items)
        wait_s = self._wait_s(preference)
        if not any(durable):
            return await self._publish(sink, items, publisher, wait_s)
        spooled, published = await asyncio.gather(
            self._spool(sink, [i for i, d in zip(items, durable, strict=True) if d]),
            self._publish(
                sink, [i for i, d in zip(items, durable, strict=True) if not d], publisher, wait_s
            ),
        )
        first, second = iter(spooled), iter(published)
        return [next(first) if d else next(second) for d in durable]

    async def deliver_one(
        self, sink: str, item: Outgoing, publisher: Publisher, preference: Preference | None
    ) -> Result:
        if self.is_durable(item.route, preference):
            return (await self._spool(sink, (item,)))[0]
        wait_s = self._wait_s(preference)
        if wait_s is None:
            return await publisher.publish(item)
        return (await self._publish(sink, (item,), publisher, wait_s))[0]

    async def _spool(self, sink: str, items: Sequence[Outgoing]) -> list[Result]:
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
        try:
            await self.spool.append([sink] * len(payloads), payloads, decoded)
        except BridgeError as exc:
            self._note_refusal(exc)
            return [exc if isinstance(r, Spooled) else r for r in results]
        if self._was_full:
            self._was_full = False
            log.info("the spool accepts events again")
        self._refusals.reset()
        return results

    def _note_refusal(self, exc: BridgeError) -> None:
        METRICS.error("spool", exc.code)
        if isinstance(exc, SpoolFull):
            if not self._was_full:
                self._was_full = True
                log.warning("%s (readiness goes 503 until space comes back)", exc.message)
        else:
            self._refusals.note("spooling failed, events refused with 503: %s", exc.message)

    async def _publish(
        self, sink: str, items: Sequence[Outgoing], publisher: Publisher, wait_s: float | None
    ) -> list[Result]:
        """Publish now. With ``wait_s`` (``Prefer: wait``), what the broker has not
        confirmed in time is spooled instead; the publish goes on, so it may arrive twice."""
        if not items:
            return []
        if wait_s is None:
            return list(await publisher.publish_many(items))
        task = asyncio.ensure_future(publisher.publish_many(items))
        done, _ = await asyncio.wait({task}, timeout=wait_s)
        if task in done:
            return list(task.result())
        task.add_done_callback(_consume)
        log.info(
            "no confirm from sink %s within Prefer: wait=%g; spooling %d events instead",
            sink,
            wait_s,
            len(items),
        )
        return await self._spool(sink, items)

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


def _consume(task: asyncio.Future[list[Outcome]]) -> None:
    if not task.cancelled():
        task.exception()
