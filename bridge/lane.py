"""One sink's share of the background delivery: a window of spooled records, published
in batches.

A lane reads its sink's records from the spool in order and keeps a window of
them in memory, bounded in records and in bytes (``window_bytes``,
``delivery.window_bytes``, charged `COST_PER_BYTE` times each record's size). It
publishes them in batches through the sink's `Publisher`. Order is kept per
(sink, destination, key): a record whose group has an earlier record waiting for
a retry waits behind it, while other groups go on. A publish confirmed by the
broker is acknowledged to the spool; a retriable failure is retried after the
`RetryPolicy`'s backoff; the rest go to `bridge.deadletter`.

A lane knows nothing of the `bridge.deliverer.Deliverer` that runs it: what it
needs comes in one frozen `LaneSettings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from bridge import tracing
from bridge.deadletter import DeadLetterRoute, DeadLetters
from bridge.delivery import Publisher
from bridge.errors import BridgeError
from bridge.metrics import Metrics
from bridge.results import Delivery
from bridge.retry import RetryPolicy
from bridge.sinks.base import Outgoing
from bridge.spool import codec
from bridge.spool.store import TAIL_COST_PER_BYTE, Spool, SpoolItem

#: What a windowed record costs per byte of its size on disk: the record plus the event
#: objects decoded from it (as `bridge.spool.store.TAIL_COST_PER_BYTE`).
COST_PER_BYTE: Final = TAIL_COST_PER_BYTE


@dataclass(frozen=True, eq=False)
class LaneSettings:
    """What every lane of one deliverer shares: its collaborators, the window bounds,
    and the two calls back into whoever runs the lanes."""

    spool: Spool
    #: Validates records read back from files and routes them by the current routes.
    decoder: codec.Decoder
    policy: RetryPolicy
    #: Where lanes count retries, dead letters and errors (the bus's).
    metrics: Metrics
    #: Records per publish call, at most.
    batch_size: int
    #: Records one lane holds, at most (at least ``batch_size``).
    window: int
    #: Bytes of records one lane holds (each charged `COST_PER_BYTE` times its size);
    #: one record is always let in, however large, so delivery never stalls.
    window_bytes: int
    #: Where a route's undeliverable events go, if it names a ``dead_letter``.
    dead_letter_route: Callable[[str], DeadLetterRoute | None]
    #: Called after records were settled (delivered or dead-lettered).
    made_progress: Callable[[], None]


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


class Lane:
    """Delivers one sink's records (``publisher`` None: a sink no longer configured,
    whose records are all kept locally as dead letters)."""

    def __init__(self, settings: LaneSettings, sink: str, publisher: Publisher | None) -> None:
        self.settings = settings
        self.sink = sink
        self.publisher = publisher
        self.spool = settings.spool
        self.cursor = settings.spool.cursor(sink)
        self.window: dict[tuple[int, int], _Entry] = {}
        #: What the window holds, as charged against ``LaneSettings.window_bytes``.
        self.window_cost = 0
        self._dead = DeadLetters(sink, settings.spool, settings.metrics, settings.dead_letter_route)
        # After a call in which everything failed retriably (the broker is down, most
        # likely), the lane pauses: one probe per backoff step instead of one per key.
        self._failed_calls = 0
        self._paused_until = 0.0
        self._arrived = asyncio.Event()  # replaced after each set: a broadcast
        self._room = asyncio.Event()
        self._retries = settings.metrics.delivery_retries.labels(sink)

    def oldest_age_s(self, now_ns: int) -> float:
        """Seconds since the oldest record in the window was accepted (0: none)."""
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
        settings = self.settings
        while not self.spool.closing:
            room = settings.window - len(self.window)
            room_bytes = settings.window_bytes - self.window_cost
            if room <= 0 or (room_bytes <= 0 and self.window):
                self._room.clear()
                await self._room.wait()
                continue
            seen = self.spool.commits
            items = await self.cursor.read(
                min(room, settings.batch_size), max(1, room_bytes // COST_PER_BYTE)
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
        decode = self.settings.decoder.decode
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
            await self._dead.keep_locally(
                [
                    (item, codec.to_dead_letter(item.payload, why, code, 0))
                    for item, why in undecodable
                ],
                code,
            )
            self.settings.made_progress()

    def _ready(self, now: float) -> tuple[list[_Entry], float | None]:
        """Entries to publish now, in spool order, and when the next held one is due."""
        if now < self._paused_until:
            return [], self._paused_until
        batch: list[_Entry] = []
        held: set[tuple[str, str | None]] = set()
        next_due: float | None = None
        limit = self.settings.batch_size
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
        policy = self.settings.policy
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
            gave_up = policy.exhausted(entry.attempts, entry.accepted_ns, now_ns)
            if gave_up is not None:
                dead.append((entry, f"{gave_up}; last error: {result.message}", result.code))
                continue
            entry.due = now + policy.delay(entry.attempts)
            self._retries.inc()
        if delivered or dead:
            self._failed_calls = 0
        else:
            self._failed_calls += 1
            self._paused_until = now + policy.delay(self._failed_calls)
        if delivered:
            self.spool.ack(delivered)
        if dead:
            for entry, _, _ in dead:
                self._remove(entry)
            await self._dead.dead_letter(dead)
        self._room.set()
        self.settings.made_progress()
