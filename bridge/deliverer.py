"""The background deliverer: publishes spooled events, retries, dead-letters.

One lane per sink reads that sink's records from the spool in order, keeps a
window of them in memory (bounded in records and in bytes: ``window_bytes``,
``delivery.window_bytes``, charged `COST_PER_BYTE` times each record's size),
and publishes them in batches through the
sink's `Publisher`. Order is kept per (sink, destination, key): a record
whose group has an earlier record waiting for a retry waits behind it, while
other groups go on. A publish confirmed by the broker is acknowledged to the
spool; a retriable failure is retried after an exponential backoff with
jitter; a non-retriable failure, or one out of attempts or age
(``delivery.retry``), is dead-lettered: published to the route's
``dead_letter`` destination with the reason in ``evbridge-dead-letter-*``
headers, or, with none configured (or if that fails too), kept in the spool's
local dead-letter area for ``evbridge spool replay-dead-letters``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from bridge import tracing
from bridge.config import RetryConfig, RouteConfig
from bridge.delivery import Publisher
from bridge.destinations import Destination
from bridge.errors import BridgeError, SinkError
from bridge.metrics import METRICS, Metrics
from bridge.results import Delivery
from bridge.sinks.base import Outgoing, RouteOptions
from bridge.spool import codec
from bridge.spool.store import TAIL_COST_PER_BYTE, Spool, SpoolItem

log = logging.getLogger("bridge.deliverer")

HEADER_PREFIX: Final = "evbridge-dead-letter-"
#: What a windowed record costs per byte of its size on disk: the record plus the event
#: objects decoded from it (as `bridge.spool.store.TAIL_COST_PER_BYTE`).
COST_PER_BYTE: Final = TAIL_COST_PER_BYTE
_MAX_REASON: Final = 1024


class RetryPolicy:
    """Backoff and give-up rules from ``delivery.retry``."""

    def __init__(self, config: RetryConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._random = rng or random.Random()

    def delay(self, attempts: int) -> float:
        """Seconds before attempt ``attempts + 1``: half the exponential step, plus up to
        as much again at random (so failed events of many keys do not retry in lockstep)."""
        step = min(self.config.max_s, self.config.initial_s * 2.0 ** max(0, attempts - 1))
        return step / 2 + self._random.uniform(0, step / 2)

    def exhausted(self, attempts: int, accepted_ns: int, now_ns: int) -> str | None:
        """Why to give up after ``attempts`` failed attempts, or None to retry."""
        limit = self.config.max_attempts
        if limit is not None and attempts >= limit:
            return f"gave up after {attempts} attempts"
        max_age = self.config.max_age_s
        if max_age is not None and accepted_ns and (now_ns - accepted_ns) / 1e9 >= max_age:
            return f"gave up after {(now_ns - accepted_ns) / 1e9:.0f}s (max_age_s {max_age:g})"
        return None


@dataclass(frozen=True, eq=False)
class _DeadLetterRoute:
    publisher: Publisher
    #: Compiled and validated at config load, with the route (`bridge.destinations`).
    destination: Destination

    def outgoing(self, entry: _Entry, reason: str, code: str) -> Outgoing:
        """The dead letter for ``entry``; raises `BridgeError` if its destination renders
        to one the sink refuses."""
        event = entry.outgoing.event
        headers = {
            **event.headers,
            f"{HEADER_PREFIX}reason": _printable(reason),
            f"{HEADER_PREFIX}code": _printable(code),
            f"{HEADER_PREFIX}sink": entry.item.sink,
            f"{HEADER_PREFIX}route": entry.outgoing.route,
            f"{HEADER_PREFIX}destination": entry.destination,
            f"{HEADER_PREFIX}attempts": str(entry.attempts),
        }
        dead_event = msgspec.structs.replace(event, headers=headers)
        options = self.destination.options_for(dead_event)
        return Outgoing(dead_event, entry.outgoing.route, options, entry.outgoing.key)


def _printable(text: str) -> str:
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    return cleaned[:_MAX_REASON] or "-"


class _Entry:
    """A record in a lane's window."""

    __slots__ = ("accepted_ns", "attempts", "destination", "due", "group", "item", "outgoing")

    def __init__(
        self, item: SpoolItem, outgoing: Outgoing, destination: str, accepted_ns: int
    ) -> None:
        self.item = item
        self.accepted_ns = accepted_ns
        self.outgoing = outgoing
        self.destination = destination
        self.group = (destination, outgoing.key)
        self.attempts = 0
        self.due = 0.0  # loop time before which it must not be published again


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
        # Records read back from files are validated and re-routed by the current routes.
        self.decoder = codec.Decoder(route_types, routes)
        self.policy = RetryPolicy(retry, rng)
        self.batch_size = batch_size
        self.window = max(window, batch_size)
        #: Bytes of records one lane holds (each charged `COST_PER_BYTE` times its size);
        #: one record is always let in, however large, so delivery never stalls.
        self.window_bytes = window_bytes
        self._dead_routes: dict[str, _DeadLetterRoute] = {}
        for route in routes:
            if route.dead_letter is not None:
                self._dead_routes[route.name] = _DeadLetterRoute(
                    publishers[route.dead_letter.sink], route.dead_letter.destination
                )
        self.lanes: dict[str, _Lane] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._progress = asyncio.Event()

    def dead_letter_route(self, route: str) -> _DeadLetterRoute | None:
        """Where ``route``'s undeliverable events go, if it names a ``dead_letter``."""
        return self._dead_routes.get(route)

    def start(self) -> None:
        """Start a lane for every configured sink and every sink the spool still holds
        records for (a sink since removed from the config dead-letters them locally).
        Calling it again starts lanes only for sinks that have none."""
        for sink in (*self.publishers, *self.spool.sinks()):
            if sink in self.lanes:
                continue
            lane = _Lane(self, sink, self.publishers.get(sink))
            self.lanes[sink] = lane
            self._tasks.append(
                asyncio.create_task(self._supervise(lane), name=f"evbridge-deliver-{sink}")
            )

    @staticmethod
    async def _supervise(lane: _Lane) -> None:
        """Run a lane; an unexpected error is logged and counted, and the lane goes on."""
        while True:
            try:
                await lane.run()
            except Exception as exc:
                lane.deliverer.metrics.error("delivery", type(exc).__name__)
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


class _Lane:
    """Delivers one sink's records."""

    def __init__(self, deliverer: Deliverer, sink: str, publisher: Publisher | None) -> None:
        self.deliverer = deliverer
        self.sink = sink
        self.publisher = publisher
        self.spool = deliverer.spool
        self.cursor = deliverer.spool.cursor(sink)
        self.window: dict[tuple[int, int], _Entry] = {}
        #: What the window holds, as charged against ``Deliverer.window_bytes``.
        self.window_cost = 0
        # After a call in which everything failed retriably (the broker is down, most
        # likely), the lane pauses: one probe per backoff step instead of one per key.
        self._failed_calls = 0
        self._paused_until = 0.0
        self._arrived = asyncio.Event()  # replaced after each set: a broadcast
        self._room = asyncio.Event()
        self._retries = deliverer.metrics.delivery_retries.labels(sink)

    def oldest_age_s(self, now_ns: int) -> float:
        for entry in self.window.values():
            return max(0.0, (now_ns - entry.accepted_ns) / 1e9) if entry.accepted_ns else 0.0
        return 0.0

    def _remove(self, entry: _Entry) -> None:
        del self.window[(entry.item.segment, entry.item.offset)]
        self.window_cost -= entry.item.size * COST_PER_BYTE

    async def run(self) -> None:
        """Publish from the window while a reader task keeps it filled (so reading and
        decoding the next batch overlaps with waiting for the broker)."""
        reader = asyncio.create_task(self._read_loop(), name=f"evbridge-read-{self.sink}")
        try:
            await self._publish_loop()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _publish_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            arrived = self._arrived
            batch, next_due = self._ready(loop.time())
            if batch:
                await self._publish(batch)
                continue
            timeout = None if next_due is None else max(0.0, next_due - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await arrived.wait()

    async def _read_loop(self) -> None:
        deliverer = self.deliverer
        while not self.spool.closing:
            room = deliverer.window - len(self.window)
            room_bytes = deliverer.window_bytes - self.window_cost
            if room <= 0 or (room_bytes <= 0 and self.window):
                self._room.clear()
                await self._room.wait()
                continue
            seen = self.spool.commits
            items = await self.cursor.read(
                min(room, deliverer.batch_size), max(1, room_bytes // COST_PER_BYTE)
            )
            if items:
                await self._add(items)
            elif self.cursor.at_end:
                await self.spool.wait_committed(seen)

    def _signal_arrival(self) -> None:
        self._arrived.set()
        self._arrived = asyncio.Event()

    async def _add(self, items: list[SpoolItem]) -> None:
        undecodable: list[tuple[SpoolItem, str]] = []
        decode = self.deliverer.decoder.decode
        window = self.window
        sink = self.sink
        for item in items:
            try:
                obj = item.obj
                decoded = obj if isinstance(obj, codec.Decoded) else decode(item.payload)
            except KeyError:
                undecodable.append((item, f"sink {item.sink!r} is not configured"))
                continue
            except (msgspec.DecodeError, BridgeError) as exc:
                undecodable.append((item, f"the spooled record cannot be read: {exc}"))
                continue
            outgoing = decoded.outgoing
            window[(item.segment, item.offset)] = _Entry(
                item, outgoing, outgoing.options.destination(sink), decoded.accepted_ns
            )
            self.window_cost += item.size * COST_PER_BYTE
        self._signal_arrival()
        if undecodable:
            code = "unknown_sink" if self.publisher is None else "undecodable"
            await self._keep_locally(
                [
                    (item, codec.to_dead_letter(item.payload, why, code, 0))
                    for item, why in undecodable
                ],
                code,
            )

    def _ready(self, now: float) -> tuple[list[_Entry], float | None]:
        """Entries to publish now, in spool order, and when the next held one is due."""
        if now < self._paused_until:
            return [], self._paused_until
        batch: list[_Entry] = []
        held: set[tuple[str, str | None]] = set()
        next_due: float | None = None
        limit = self.deliverer.batch_size
        for entry in self.window.values():
            if entry.group in held:
                continue
            if entry.due > now:
                held.add(entry.group)
                if next_due is None or entry.due < next_due:
                    next_due = entry.due
                continue
            batch.append(entry)
            if len(batch) >= limit:
                break
        return batch, next_due

    async def _publish(self, batch: list[_Entry]) -> None:
        assert self.publisher is not None
        items: Sequence[Outgoing] = [entry.outgoing for entry in batch]
        spans = None
        if tracing.TRACER is not None:
            attempts = [entry.attempts + 1 for entry in batch]
            items, spans = tracing.start_attempts(self.sink, items, attempts)
        results = await self.publisher.publish_many(items)
        if spans is not None:
            tracing.end_attempts(spans, results)
        delivered: list[SpoolItem] = []
        dead: list[tuple[_Entry, str, str]] = []
        now = asyncio.get_running_loop().time()
        now_ns = time.time_ns()
        for entry, result in zip(batch, results, strict=True):
            if isinstance(result, Delivery):
                delivered.append(entry.item)
                self._remove(entry)
                continue
            entry.attempts += 1
            if not result.retriable:
                dead.append((entry, result.message, result.code))
                continue
            gave_up = self.deliverer.policy.exhausted(entry.attempts, entry.accepted_ns, now_ns)
            if gave_up is not None:
                dead.append((entry, f"{gave_up}; last error: {result.message}", result.code))
                continue
            entry.due = now + self.deliverer.policy.delay(entry.attempts)
            self._retries.inc()
        if delivered or dead:
            self._failed_calls = 0
        else:
            self._failed_calls += 1
            self._paused_until = now + self.deliverer.policy.delay(self._failed_calls)
        if delivered:
            self.spool.ack(delivered)
        if dead:
            await self._dead_letter(dead)
        self._room.set()
        self.deliverer.made_progress()

    async def _dead_letter(self, dead: list[tuple[_Entry, str, str]]) -> None:
        """Publish each to its route's dead-letter destination; keep the rest locally."""
        local: list[tuple[_Entry, str, str]] = []
        by_route: dict[_DeadLetterRoute, list[tuple[_Entry, str, str, Outgoing]]] = {}
        for entry, reason, code in dead:
            self._remove(entry)
            route = self.deliverer.dead_letter_route(entry.outgoing.route)
            if route is None:
                local.append((entry, reason, code))
                continue
            try:
                outgoing = route.outgoing(entry, reason, code)
            except BridgeError as exc:
                local.append((entry, f"{reason}; dead-letter destination: {exc.message}", code))
                continue
            by_route.setdefault(route, []).append((entry, reason, code, outgoing))
        for route, entries in by_route.items():
            results = await route.publisher.publish_many([o for *_, o in entries])
            published: list[SpoolItem] = []
            for (entry, reason, code, _), result in zip(entries, results, strict=True):
                if isinstance(result, SinkError):
                    local.append(
                        (
                            entry,
                            f"{reason}; publishing the dead letter failed: {result.message}",
                            code,
                        )
                    )
                    continue
                published.append(entry.item)
                self._dead_lettered(entry, reason, code, "dead-letter destination")
            self.spool.ack(published)
        if local:
            await self._keep_locally(
                [
                    (
                        entry.item,
                        codec.to_dead_letter(entry.item.payload, reason, code, entry.attempts),
                    )
                    for entry, reason, code in local
                ],
                None,
            )
            for entry, reason, code in local:
                self._dead_lettered(entry, reason, code, "local dead-letter area")

    def _dead_lettered(self, entry: _Entry, reason: str, code: str, where: str) -> None:
        self.deliverer.metrics.dead_lettered.labels(self.sink, code).inc()
        event = entry.outgoing.event
        log.warning(
            "event %s %s to %s dead-lettered to the %s after %d attempts: %s (%s)",
            event.type,
            event.id,
            entry.destination,
            where,
            entry.attempts,
            reason,
            code,
        )

    async def _keep_locally(self, records: list[tuple[SpoolItem, bytes]], code: str | None) -> None:
        """Move records to the spool's dead-letter area; retried until the disk takes them."""
        delay = 0.1
        while True:
            try:
                await self.spool.dead_letter([i for i, _ in records], [p for _, p in records])
                break
            except BridgeError as exc:
                log.error("could not store %d dead letters (%s); retrying", len(records), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if code is not None:
            self.deliverer.metrics.dead_lettered.labels(self.sink, code).inc(len(records))
            log.warning(
                "%d spooled records for sink %s kept in the local dead-letter area (%s)",
                len(records),
                self.sink,
                code,
            )
        self.deliverer.made_progress()
