"""Deduplication windows: an event whose (``source``, ``id``) was handled recently is
not handled again.

A `Window` remembers keys for ``window_s`` seconds, at most ``max_entries`` of
them (the least recently remembered go first), so its memory is bounded
whatever the traffic: a few hundred bytes per entry (the key's two strings, and
at ingest the result's id, type, status and deliveries), some tens of MB at the
default 100 000.
Sources use one each (`bridge.sources.runner`: a duplicate is acked without
running its handlers); the HTTP ingest uses one for retried POSTs of
``/v1/events`` and of ``/v1/events/batch`` items (`IngestDedupe`: a duplicate is
answered with the first result, flagged ``duplicate: true``). Dropped duplicates are counted in
``evbridge_dedupe_dropped_total{source}`` (the source's name, or ``ingest``).

A window lives in one process: it forgets on restart and is not shared between
instances, so it narrows duplicates, it does not rule them out.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from time import monotonic
from typing import Annotated, ClassVar, Final, Generic, TypeVar

import msgspec

from bridge.event import Event
from bridge.results import EmitResult

V = TypeVar("V")

#: The label of ``evbridge_dedupe_dropped_total`` for the HTTP ingest's window.
INGEST: Final = "ingest"


class DedupeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A deduplication window: (``source``, ``id``) pairs remembered for ``window_s``
    seconds, at most ``max_entries`` of them (the oldest are forgotten first)."""

    window_s: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    max_entries: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 100_000

    field_docs: ClassVar[Mapping[str, str]] = {
        "window_s": "Seconds an event's (`source`, `id`) is remembered once handled.",
        "max_entries": "Most pairs remembered; beyond it the oldest are forgotten "
        "(memory: a few hundred bytes each).",
    }


class Window(Generic[V]):
    """Keys remembered for ``window_s`` seconds, at most ``max_entries`` of them.

    Kept in an `OrderedDict` in the order they were remembered, so expiry and
    eviction both take from the front: every operation is O(1) amortised.
    """

    __slots__ = ("_clock", "_entries", "max_entries", "window_s")

    def __init__(
        self, window_s: float, max_entries: int, clock: Callable[[], float] = monotonic
    ) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            key, (at, _) = next(iter(entries.items()))
            if now - at < self.window_s:
                return
            del entries[key]

    def get(self, key: Hashable) -> V | None:
        """The value remembered for ``key`` within the window, else None."""
        self._expire(self._clock())
        found = self._entries.get(key)
        return None if found is None else found[1]

    def remember(self, key: Hashable, value: V) -> None:
        """Remember ``key`` (again: its window starts now), evicting the oldest if full."""
        now = self._clock()
        entries = self._entries
        entries.pop(key, None)
        entries[key] = (now, value)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
        self._expire(now)

    def forget(self, key: Hashable) -> None:
        self._entries.pop(key, None)


def key_of(event: Event, default_source: str) -> tuple[str, str]:
    """An event's deduplication key: its (``source``, ``id``); the bus's source if unset."""
    return (event.source or default_source, event.id)


class IngestDedupe:
    """The HTTP ingest's window (``ingest.dedupe``): a POST of an event already
    handled in the window gets the first result, flagged ``duplicate: true``, without
    its handler outcomes and follow-ups (the handlers did not run again). In a batch
    this holds per item, and an item repeating an earlier item of the same batch gets
    that item's result, flagged the same way.

    A retry that arrives while the first POST is still running waits for it and
    gets its result. A result that says sending again may succeed (a retriable
    rejection: 503, 429) is not remembered, so the retry runs for real.
    """

    def __init__(
        self, config: DedupeConfig, default_source: str, dropped: Callable[[], None]
    ) -> None:
        self._window: Window[asyncio.Future[EmitResult]] = Window(
            config.window_s, config.max_entries
        )
        self._default_source = default_source
        self._dropped = dropped

    async def emit(self, event: Event, run: Callable[[Event], Awaitable[EmitResult]]) -> EmitResult:
        """``run(event)``, or the result of the first run of the same event."""
        key = key_of(event, self._default_source)
        earlier = await self._earlier(key)
        if earlier is not None:
            return earlier
        future = self._claim(key)
        try:
            result = await run(event)
        except BaseException:
            self._release(key, future)
            raise
        self._settle(key, future, result)
        return result

    async def emit_many(
        self,
        events: Sequence[Event],
        run: Callable[[list[Event]], Awaitable[list[EmitResult]]],
    ) -> list[EmitResult]:
        """One result per event, in order: ``run`` for the events not handled in the
        window (in their order), the first run's result for the others.

        Items whose first run is still going (another request's) are waited for only
        after this batch's own items ran and settled: two batches holding the same two
        events in opposite orders would otherwise each wait for the other for ever. An
        item whose awaited first run failed runs for real, in a second ``run`` call.
        """
        results: list[EmitResult | None] = [None] * len(events)
        first_in_batch: dict[tuple[str, str], int] = {}
        repeats: list[tuple[int, int]] = []  # (index, index of its first in this batch)
        fresh: list[int] = []
        running: list[tuple[int, tuple[str, str]]] = []  # first run elsewhere, not done
        for index, event in enumerate(events):
            key = key_of(event, self._default_source)
            first = first_in_batch.setdefault(key, index)
            if first != index:
                repeats.append((index, first))
                continue
            earlier = self._window.get(key)
            if earlier is None:
                fresh.append(index)
            elif not earlier.done():
                running.append((index, key))
            elif (answer := self._answer(earlier)) is not None:
                results[index] = answer
            else:
                fresh.append(index)
        await self._run_claimed(events, fresh, run, results)
        again: list[int] = []
        for index, key in running:
            answer = await self._earlier(key)
            if answer is None:
                again.append(index)
            else:
                results[index] = answer
        await self._run_claimed(events, again, run, results)
        for index, first in repeats:
            self._dropped()
            results[index] = self._duplicate(_done(results[first]))
        return [_done(result) for result in results]

    async def _run_claimed(
        self,
        events: Sequence[Event],
        indexes: list[int],
        run: Callable[[list[Event]], Awaitable[list[EmitResult]]],
        results: list[EmitResult | None],
    ) -> None:
        """Claim the keys of ``events[i]`` for ``i`` in ``indexes`` (a retry arriving
        meanwhile waits for them), run those events in one call and settle each."""
        if not indexes:
            return
        claimed = [(key_of(events[i], self._default_source), i) for i in indexes]
        futures = [self._claim(key) for key, _ in claimed]
        try:
            ran = await run([events[i] for i in indexes])
        except BaseException:
            for (key, _), future in zip(claimed, futures, strict=True):
                self._release(key, future)
            raise
        for (key, index), future, result in zip(claimed, futures, ran, strict=True):
            results[index] = result
            self._settle(key, future, result)

    async def _earlier(self, key: tuple[str, str]) -> EmitResult | None:
        """The first run's result (flagged, counted) if it answers a repeat, else None."""
        first = self._window.get(key)
        if first is None:
            return None
        try:
            # Shielded: a client giving up on the retry must not cancel the first run.
            await asyncio.shield(first)
        except BaseException:
            if not first.done():
                raise  # this request was cancelled, not the first run
        return self._answer(first)

    def _answer(self, first: asyncio.Future[EmitResult]) -> EmitResult | None:
        """For a finished first run: its result (flagged, counted) if it answers a
        repeat, else None (it raised or was cut off, or sending again may succeed)."""
        if first.cancelled() or first.exception() is not None:
            return None  # the first run raised or was cut off: this one runs for real
        result = first.result()
        if result.error is not None and result.error.retriable:
            return None  # the first run may succeed if sent again: so may this one
        self._dropped()
        return self._duplicate(result)

    @staticmethod
    def _duplicate(result: EmitResult) -> EmitResult:
        return msgspec.structs.replace(result, handlers=[], follow_ups=[], duplicate=True)

    def _claim(self, key: tuple[str, str]) -> asyncio.Future[EmitResult]:
        future: asyncio.Future[EmitResult] = asyncio.get_running_loop().create_future()
        self._window.remember(key, future)
        return future

    def _release(self, key: tuple[str, str], future: asyncio.Future[EmitResult]) -> None:
        """The run raised or was cancelled: forgotten, and whoever waits runs for real."""
        self._window.forget(key)
        future.cancel()

    def _settle(
        self, key: tuple[str, str], future: asyncio.Future[EmitResult], result: EmitResult
    ) -> None:
        future.set_result(result)
        if result.error is not None and result.error.retriable:
            self._window.forget(key)
        elif result.handlers or result.follow_ups:
            # Kept without the handler outcomes and follow-ups (a retry's answer says what
            # was published, and its handlers did not run again): entries stay small.
            slim: asyncio.Future[EmitResult] = asyncio.get_running_loop().create_future()
            slim.set_result(msgspec.structs.replace(result, handlers=[], follow_ups=[]))
            self._window.remember(key, slim)


def _done(result: EmitResult | None) -> EmitResult:
    assert result is not None  # every index was given its result above
    return result
