"""The Kafka source's record flow: lanes in order, a concurrency bound, backpressure by
``pause()``, and commits up to each partition's lowest unfinished record.

A *lane* is a partition (``order: partition``) or one key within a partition
(``order: key``). Each lane's records are handled one at a time, in offset
order, by a worker of its own; at most ``concurrency`` records are handled at
once across lanes. At most ``max_records`` records are *held* (fetched and not
finished): the fetch loop asks only for the room left, and at the limit pauses
every assigned partition (`AIOKafkaConsumer.pause`, so the client does not
prefetch either) until a record finishes. Memory is bounded whatever the backlog.

The commit rule, per partition: the *watermark* is the lowest offset fetched
and not finished (or the fetch position when none is held). With key lanes,
records finish out of offset order; the watermark only moves past contiguous
finished offsets, so a commit never passes an unfinished record.

A record whose verdict is ``redeliver`` rewinds its partition: its queued
records are dropped, the partition is paused for a backoff pause, then the
consumer seeks back to the lowest dropped or failed offset (records in flight
meanwhile finish, and may be handled again after the seek: at-least-once).

`revoke` (a rebalance) and `close` (stop) drop what is queued, give records in
flight ``grace_s``, cancel the rest, and commit the watermarks: what was not
finished is consumed again by the partition's next owner. A dropped record is not
finished: it brings its partition's position back to it, so the watermark stays at or
below it even when every record in flight finishes. No broker library is
imported here: the consumer is anything with aiokafka's consumer methods used.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable
from typing import Any, Literal, Protocol

from bridge.sinks.toolkit import Backoff, TaskGroup, describe
from bridge.sources.base import Verdict

log = logging.getLogger("bridge.sources.kafka")

Order = Literal["partition", "key"]


class Consumer(Protocol):
    """The part of `aiokafka.AIOKafkaConsumer` the flow uses."""

    def assignment(self) -> set[Any]: ...
    def pause(self, *partitions: Any) -> None: ...
    def resume(self, *partitions: Any) -> None: ...
    def paused(self) -> set[Any]: ...
    def seek(self, partition: Any, offset: int) -> None: ...
    def highwater(self, partition: Any) -> int | None: ...
    async def commit(self, offsets: dict[Any, int]) -> None: ...


class Record(Protocol):
    """The part of `aiokafka.ConsumerRecord` the flow uses."""

    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...


class _Partition:
    """What the flow knows of one assigned partition."""

    def __init__(self) -> None:
        #: Offsets fetched and not finished, each with its count (after a seek back, a
        #: record still in flight may be fetched again). A plain dict: cheaper per record
        #: than a `collections.Counter`.
        self.pending: dict[int, int] = {}
        #: The offset after the last record fetched (or the seek target), lowered to a
        #: record dropped unhandled (`drop`).
        self.position: int | None = None
        self.committed: int | None = None
        #: While a rewind waits for its backoff: the lowest offset to seek back to.
        self.rewind_to: int | None = None

    @property
    def watermark(self) -> int | None:
        """The lowest unfinished offset: where the group resumes if this one stops now.
        The position counts too: after a seek back it is below records still in flight."""
        marks = [*self.pending, self.position, self.rewind_to]
        known = [m for m in marks if m is not None]
        return min(known) if known else None

    def hold(self, offset: int) -> None:
        pending = self.pending
        pending[offset] = pending.get(offset, 0) + 1

    def release(self, offset: int) -> None:
        pending = self.pending
        count = pending.get(offset, 0)
        if count <= 1:
            pending.pop(offset, None)
        else:
            pending[offset] = count - 1

    def drop(self, offset: int) -> None:
        """A record taken out of its lane unhandled: the position comes back to it, so
        the watermark (and any commit, the stop's or the committer's) stays at or below
        it until it is fetched again: without this, records in flight finishing after a
        stop or revocation dropped the rest let the commit skip them."""
        self.release(offset)
        self.position = offset if self.position is None else min(self.position, offset)


class Flow:
    """The records of one started consumer; see the module docstring."""

    def __init__(
        self,
        consumer: Consumer,
        handle: Callable[[Any], Awaitable[Verdict]],
        *,
        name: str,
        order: Order,
        concurrency: int,
        max_records: int,
        backoff: Backoff,
        tasks: TaskGroup,
        on_commit: Callable[[float], None] | None = None,
    ) -> None:
        self.consumer = consumer
        #: Given each successful commit's duration in seconds (the ack/commit histogram).
        self._on_commit = on_commit
        self.name = name
        self.max_records = max_records
        self._handle = handle
        self._order = order
        self._slots = asyncio.Semaphore(concurrency)
        self._backoff = backoff
        self._tasks = tasks
        self._parts: dict[Any, _Partition] = {}
        self._lanes: dict[Hashable, collections.deque[tuple[Any, Any]]] = {}
        self._workers: dict[Hashable, asyncio.Task[None]] = {}
        self._redeliveries = 0
        self._room = asyncio.Event()
        self._dirty = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._full = False
        #: Records fetched and not finished, over all partitions (at most `max_records`).
        self.held = 0
        #: Records being handled now (at most ``concurrency``), and the most seen at once.
        self.running = 0
        self.most_running = 0
        #: Times fetching was paused because `max_records` records were held.
        self.pauses = 0

    # --- fetching -----------------------------------------------------------

    @property
    def room(self) -> int:
        """How many more records may be fetched now."""
        return self.max_records - self.held

    def add(self, tp: Any, records: Iterable[Any]) -> None:
        """Take fetched records of ``tp`` (in offset order) into their lanes."""
        if tp not in self.consumer.assignment():
            return  # revoked after the fetch: the new owner consumes them
        part = self._parts.setdefault(tp, _Partition())
        if part.rewind_to is not None:
            return  # fetched before the pause; the seek back brings them again
        if self._order == "partition":
            # One lane for the whole batch: its queue and worker looked up once.
            queue = self._lanes.setdefault(tp, collections.deque())
            hold = part.hold
            count = 0
            for record in records:
                hold(record.offset)
                queue.append((tp, record))
                count += 1
            if count:
                part.position = queue[-1][1].offset + 1
                self.held += count
                if tp not in self._workers:
                    self._workers[tp] = self._tasks.spawn(self._work(tp), name=f"lane {tp}")
        else:
            for record in records:
                part.hold(record.offset)
                part.position = record.offset + 1
                self.held += 1
                lane: Hashable = (tp, record.key)
                self._lanes.setdefault(lane, collections.deque()).append((tp, record))
                if lane not in self._workers:
                    self._workers[lane] = self._tasks.spawn(self._work(lane), name=f"lane {tp}")
        self.apply_pause()

    @property
    def take(self) -> int:
        """How many records to ask the next fetch for: the room left, but at most half of
        ``max_records``, so that with handlers that keep up the flow never fills (and so
        is never paused: a paused partition is not prefetched)."""
        return max(1, min(self.room, self.max_records // 2))

    async def wait_room(self, timeout: float) -> None:  # noqa: ASYNC109
        """Until a record finishes (or ``timeout``): the fetch loop's wait while full."""
        self._room.clear()
        if self.room > 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._room.wait(), timeout)

    def apply_pause(self) -> None:
        """Pause every assigned partition while full, and those rewinding; resume the rest."""
        assigned = self.consumer.assignment()
        full = self.room <= 0
        if full and not self._full:
            self.pauses += 1
        self._full = full
        want = set(assigned) if full else set()
        want |= {tp for tp, part in self._parts.items() if part.rewind_to is not None}
        want &= set(assigned)
        paused = self.consumer.paused()
        if want - paused:
            self.consumer.pause(*(want - paused))
        if paused - want:
            self.consumer.resume(*(paused - want))

    # --- handling -----------------------------------------------------------

    async def _work(self, lane: Hashable) -> None:
        queue = self._lanes[lane]
        parts, slots, handle = self._parts, self._slots, self._handle
        try:
            while queue:
                tp, record = queue.popleft()
                part = parts.get(tp)
                async with slots:
                    self.running += 1
                    if self.running > self.most_running:
                        self.most_running = self.running
                    try:
                        verdict = await handle(record)
                    finally:
                        self.running -= 1
                if part is None or parts.get(tp) is not part:
                    continue  # revoked meanwhile: no longer ours to commit
                action = verdict.action
                if action == "redeliver":
                    await self._rewind(tp, part, record.offset)
                    continue
                if action == "ack":
                    self._redeliveries = 0
                part.release(record.offset)
                self._finished()
        finally:
            self._workers.pop(lane, None)
            if not queue:
                self._lanes.pop(lane, None)

    def _finished(self, count: int = 1) -> None:
        self.held -= count
        self._room.set()
        self._dirty.set()

    def _drop_queued(self, tps: Collection[Any]) -> list[int]:
        """Take the records of ``tps`` not started yet out of their lanes; their offsets."""
        dropped: list[int] = []
        for queue in self._lanes.values():
            keep = [(tp, r) for tp, r in queue if tp not in tps]
            for tp, record in queue:
                if tp in tps:
                    dropped.append(record.offset)
                    part = self._parts.get(tp)
                    if part is not None:
                        part.drop(record.offset)
                    self.held -= 1
            if len(keep) != len(queue):
                queue.clear()
                queue.extend(keep)
        if dropped:
            self._room.set()
        return dropped

    async def _rewind(self, tp: Any, part: _Partition, offset: int) -> None:
        """Seek ``tp`` back to ``offset`` (or lower, if queued records were dropped) after a
        backoff pause, the partition paused meanwhile."""
        dropped = self._drop_queued({tp})
        lowest = min([offset, *dropped])
        # Set before the release: the watermark (so any commit) stays at or below it.
        again = part.rewind_to is not None
        part.rewind_to = lowest if part.rewind_to is None else min(part.rewind_to, lowest)
        part.release(offset)
        self._finished()
        if again:
            return  # another lane of the partition is rewinding it
        self.apply_pause()
        self._redeliveries += 1
        # Cancelled here (stop, revocation): rewind_to stays set, so the last commit
        # stays at or below it.
        await asyncio.sleep(self._backoff.delay(self._redeliveries))
        target, part.rewind_to = part.rewind_to, None
        if self._parts.get(tp) is not part:
            return
        self.consumer.seek(tp, target)
        part.position = target
        self.apply_pause()

    # --- committing ---------------------------------------------------------

    async def commit_loop(self) -> None:
        """Commit the watermarks that moved, coalescing finishes meanwhile."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self.commit()

    async def commit(self, tps: Collection[Any] | None = None) -> None:
        """Commit the watermark of each partition (of ``tps``) that moved since the last
        commit. A failure (the group rebalanced, the broker is away) is logged: the
        offsets stay lower, so the records are consumed again, never skipped."""
        async with self._commit_lock:
            offsets: dict[Any, int] = {}
            for tp, part in self._parts.items():
                mark = part.watermark
                if tps is not None and tp not in tps:
                    continue
                if mark is not None and (part.committed is None or mark > part.committed):
                    offsets[tp] = mark
            if not offsets:
                return
            try:
                start = time.perf_counter()
                await self.consumer.commit(offsets)
                if self._on_commit is not None:
                    self._on_commit(time.perf_counter() - start)
            except Exception as exc:
                log.warning("kafka source %s: commit failed (consumed again): %s",
                            self.name, describe(exc))  # fmt: skip
                return
            for tp, mark in offsets.items():
                current = self._parts.get(tp)
                if current is not None:
                    current.committed = mark

    # --- revocation and stop ------------------------------------------------

    async def revoke(self, tps: Collection[Any], grace_s: float) -> None:
        """Partitions taken away (a rebalance): drop their queued records, give those in
        flight ``grace_s``, cancel the rest, commit what is done and forget them."""
        tps = set(tps) & set(self._parts)
        if not tps:
            return
        self._drop_queued(tps)
        await self._settle(tps, grace_s)
        await self.commit(tps)
        for tp in tps:
            gone = self._parts.pop(tp)
            self.held -= sum(gone.pending.values())  # cancelled in flight
        self._room.set()

    async def close(self, grace_s: float) -> None:
        """Stop: as `revoke` for every partition (the consumer still in the group)."""
        await self.revoke(set(self._parts), grace_s)

    async def abandon(self) -> None:
        """Cancel every lane (the consumer is closing): nothing more is committed."""
        self._parts.clear()
        workers = list(self._workers.values())
        for task in workers:
            task.cancel()
        if workers:
            await asyncio.wait(workers)

    async def _settle(self, tps: Collection[Any], grace_s: float) -> None:
        def of(lane: Hashable) -> Any:
            return lane[0] if self._order == "key" else lane  # type: ignore[index]

        workers = [task for lane, task in self._workers.items() if of(lane) in tps]
        if not workers:
            return
        _, late = await asyncio.wait(workers, timeout=grace_s)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
            log.warning("kafka source %s: %d lane(s) abandoned after grace_s; their records "
                        "are consumed again", self.name, len(late))  # fmt: skip

    # --- lag ----------------------------------------------------------------

    def lag(self) -> int | None:
        """Records of the assigned partitions not done: the high watermark minus the
        lowest unfinished offset, summed (None until the broker reported a highwater)."""
        total: int | None = None
        for tp, part in self._parts.items():
            high = self.consumer.highwater(tp)
            mark = part.watermark
            if high is None or mark is None:
                continue
            total = (total or 0) + max(0, high - mark)
        return total
