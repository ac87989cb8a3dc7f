"""One event path: handlers, routing, delivery and follow-ups, for every event.

`EventPath.run` is the one orchestration behind `Bus.emit` (a batch of one),
`Bus.emit_many` and the follow-ups handlers emit: run each event's handlers
(up to ``concurrency`` events at once), route the notification events, hand
them to their route's channel (`bridge.dispatch`: one call per sink and mode),
publish the results to the subscriptions, then do the same for the follow-ups,
one level deeper.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from functools import partial
from time import monotonic
from typing import Any, Final

import msgspec

from bridge import tracing
from bridge.dispatch import Channel, Dispatch
from bridge.durable import Result, Spooled
from bridge.errors import BridgeError, SinkError, SpoolError
from bridge.event import Event
from bridge.handlers import Context, HandlerRegistry
from bridge.hub import Hub
from bridge.inject import close as close_scope
from bridge.metrics import Metrics
from bridge.middleware import Middleware
from bridge.pipeline import Slot, Watchdog, run_handlers
from bridge.policy import OnError
from bridge.prefer import Preference
from bridge.resources import OpenResources
from bridge.results import Delivery, EmitResult, ErrorInfo, HandlerOutcome
from bridge.routing import Router
from bridge.sinks.base import Outgoing
from bridge.threads import HandlerThreads
from bridge.typed import EventData, to_event

log = logging.getLogger("bridge.bus")


def _error_info(exc: BridgeError) -> ErrorInfo:
    return ErrorInfo(exc.code, exc.message, exc.field, exc.retriable)


class _Handled:
    """An event after its handlers ran: what they did and what they emitted, and
    why a handler's policy rejected it (then it is neither published nor followed up)."""

    __slots__ = ("event", "follow_ups", "outcomes", "rejection", "span")

    def __init__(
        self,
        event: Event,
        outcomes: list[HandlerOutcome],
        follow_ups: list[Event],
        rejection: ErrorInfo | None = None,
    ) -> None:
        self.event = event
        self.outcomes = outcomes
        self.follow_ups = follow_ups
        self.rejection = rejection
        #: The event's span while tracing is on (`bridge.tracing`), ended once delivered.
        self.span: Any = None


class UnhandledLog:
    """Logs, at info level, that an event type has no handler: once per type, then at
    most once per `INTERVAL_S` per type (types come from clients: the table is bounded)."""

    INTERVAL_S: Final = 60.0
    MAX_TYPES: Final = 1024

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def note(self, type_: str) -> None:
        now = monotonic()
        last = self._last.get(type_)
        if last is not None and now - last < self.INTERVAL_S:
            return
        if last is None and len(self._last) >= self.MAX_TYPES:
            self._last.clear()
        self._last[type_] = now
        log.info(
            "no handler for events of type %s (counted in evbridge_events_unhandled_total; "
            "logged at most once a minute per type)",
            type_,
            extra={"event_type": type_},
        )


class Lifecycle:
    """Started/stopped state, shared by a bus and its scopes."""

    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started = False


class EventPath:
    """The path every event of one bus (and its scopes) takes; see the module docstring."""

    def __init__(
        self,
        *,
        registry: HandlerRegistry,
        router: Router,
        dispatch: Dispatch,
        life: Lifecycle,
        watchdog: Watchdog,
        threads: HandlerThreads,
        metrics: Metrics,
        source: str,
        timeout_s: float,
        cancel_grace_s: float,
        max_depth: int,
        middleware: Sequence[Middleware] = (),
        resources: OpenResources | None = None,
    ) -> None:
        self._registry = registry
        self._router = router
        self._dispatch = dispatch
        self._life = life
        self._watchdog = watchdog
        self._threads = threads
        self._metrics = metrics
        self._unhandled = metrics.events_unhandled.child()
        self._source = source
        self._timeout = timeout_s
        self._cancel_grace = cancel_grace_s
        self._max_depth = max_depth
        #: The bus's middleware list (`Bus.use` appends to it), shared with its scopes.
        self._middleware = middleware
        self._unhandled_log = UnhandledLog()
        self._resources = resources

    def _prepare(self, event: Event | EventData) -> Event:
        if not isinstance(event, Event):
            if not isinstance(event, EventData):
                raise TypeError(
                    f"emit() takes an Event or an EventData, got {type(event).__name__}"
                )
            event = to_event(event)
        if event.source is None:
            msgspec.structs.force_setattr(event, "source", self._source)
        return event

    async def run(
        self,
        events: Sequence[Event | EventData],
        depth: int,
        concurrency: int,
        delivery: Preference | None,
        hub: Hub,
        on_error: OnError | None = None,
        errors: list[BaseException] | None = None,
    ) -> list[EmitResult]:
        """The one orchestration, for single events, batches and follow-ups alike:
        handlers, then routing and delivery per channel, then the follow-ups.

        ``on_error`` is the error policy of handlers without their own
        (`bridge.policy`); ``errors``, when given, collects the handlers' errors."""
        if not events:
            return []
        handled = await self._handle_all(events, depth, concurrency, on_error, errors)
        try:
            outcomes = await self._deliver(handled, delivery)
        except BaseException as exc:
            if tracing.TRACER is not None:
                for h in handled:
                    tracing.end_span(h.span, exc)
            raise
        # Plain loops: this runs for every event, and comprehensions cost a frame each.
        results: list[EmitResult] = []
        parents: list[int] = []
        durable = delivery is not None and delivery.mode == "durable"
        for i, (h, outcome) in enumerate(zip(handled, outcomes, strict=True)):
            if h.rejection is not None:
                results.append(self._rejected_by_handler(h, h.rejection))
            elif outcome is None:
                results.append(EmitResult(h.event.id, h.event.type, "handled", h.outcomes))
            elif type(outcome) is Delivery and not durable:
                # Most events: published, said here rather than by a call of `_result`.
                results.append(
                    EmitResult(h.event.id, h.event.type, "published", h.outcomes, [outcome])
                )
            else:
                results.append(self._result(h, outcome))
                if durable:
                    results[-1] = _not_async(results[-1])
            if h.follow_ups:
                parents.extend([i] * len(h.follow_ups))
        if tracing.TRACER is not None:
            for h, result in zip(handled, results, strict=True):
                if h.span is not None:
                    tracing.end_event(h.span, result.status)
        if hub.refs:
            for h, result in zip(handled, results, strict=True):
                hub.publish(h.event, result.status)
        if parents:
            children = await self.run(
                [e for h in handled for e in h.follow_ups],
                depth + 1,
                concurrency,
                delivery,
                hub,
                on_error,
                errors,
            )
            grouped: dict[int, list[EmitResult]] = {}
            for parent, child in zip(parents, children, strict=True):
                grouped.setdefault(parent, []).append(child)
            for parent, follow in grouped.items():
                results[parent] = msgspec.structs.replace(results[parent], follow_ups=follow)
        return results

    async def _handle(
        self,
        event: Event,
        depth: int,
        slot: Slot,
        on_error: OnError | None,
        errors: list[BaseException] | None,
    ) -> _Handled:
        handlers = self._registry.match(event.type)
        if not handlers:
            self._unhandled.inc()
            self._unhandled_log.note(event.type)
            return _Handled(event, [], [])
        ctx = Context(event, depth, max_depth=self._max_depth)
        ctx.resources = self._resources
        try:
            outcomes, rejection = await run_handlers(
                handlers,
                event,
                ctx,
                slot,
                self._timeout,
                self._threads,
                self._cancel_grace,
                on_error,
                errors,
                self._middleware,
            )
        finally:
            ctx.closed = True
            if ctx.scope is not None and ctx.scope.open:
                # Generator dependencies: their code after ``yield``, also when a handler raised.
                await close_scope(ctx.scope, event)
        if rejection is not None:
            return _Handled(event, outcomes, [], rejection)
        return _Handled(event, outcomes, ctx.follow_ups)

    async def _handle_traced(
        self,
        event: Event,
        depth: int,
        slot: Slot,
        on_error: OnError | None,
        errors: list[BaseException] | None,
        batch: bool = False,
    ) -> _Handled:
        """`_handle` in the event's span, current while its handlers run."""
        span, event = tracing.start_event(event, batch, depth > 0)
        token = tracing.attach(span)
        try:
            handled = await self._handle(event, depth, slot, on_error, errors)
        finally:
            tracing.detach(token)
        handled.span = span
        if handled.follow_ups:
            handled.follow_ups = tracing.stamp(handled.follow_ups, span)
        return handled

    async def _handle_all(
        self,
        events: Sequence[Event | EventData],
        depth: int,
        concurrency: int,
        on_error: OnError | None,
        errors: list[BaseException] | None,
    ) -> list[_Handled]:
        if len(events) == 1:
            # One event (every `emit`): no worker to spawn, no results to slot in.
            task = asyncio.current_task()
            assert task is not None, "emit() must run in a task"
            slot = Slot(task)
            self._watchdog.enter(slot)
            handle = self._handle if tracing.TRACER is None else self._handle_traced
            try:
                return [await handle(self._prepare(events[0]), depth, slot, on_error, errors)]
            finally:
                self._watchdog.leave(slot)
        handled: list[_Handled | None] = [None] * len(events)
        indexes = iter(range(len(events)))

        handle = (
            self._handle if tracing.TRACER is None else partial(self._handle_traced, batch=True)
        )
        # Workers start lazily: this task is the first, and the others start only if it
        # yields to the loop before the batch is done, i.e. once an event's handlers wait.
        # Most handlers never do, and a task per worker per batch cost more than their
        # handlers did; one callback per batch costs nothing per event.
        others = min(concurrency, len(events)) - 1
        spawned: list[asyncio.Future[None]] = []

        async def worker() -> None:
            task = asyncio.current_task()
            assert task is not None, "emit() must run in a task"
            slot = Slot(task)
            self._watchdog.enter(slot)
            try:
                for i in indexes:
                    event = events[i]
                    # Most events of a batch need no preparing: no call for them.
                    if type(event) is not Event or event.source is None:
                        event = self._prepare(event)
                    handled[i] = await handle(event, depth, slot, on_error, errors)
            finally:
                self._watchdog.leave(slot)

        def start_others() -> None:
            spawned.extend(asyncio.ensure_future(worker()) for _ in range(others))

        waiting = asyncio.get_running_loop().call_soon(start_others) if others > 0 else None
        try:
            await worker()
        except BaseException:
            for future in spawned:
                future.cancel()
            raise
        finally:
            if waiting is not None:
                waiting.cancel()  # a no-op once it ran
        if spawned:
            await asyncio.gather(*spawned)
        return handled  # type: ignore[return-value]  # every slot is filled

    async def _deliver(
        self, handled: Sequence[_Handled], delivery: Preference | None
    ) -> list[Result | None]:
        """Route every notification event and deliver them, one call per channel
        (sink and mode); None for domain events."""
        channel_for = self._dispatch.channel
        if len(handled) == 1:
            # One event: its channel's single-event call (which coalesces across callers).
            event = handled[0].event
            if event.kind == "domain" or handled[0].rejection is not None:
                return [None]
            try:
                outgoing = self._router.outgoing(event)
            except BridgeError as exc:
                return [exc]
            self._require_started()
            channel = self._dispatch.defaults[outgoing.route] if delivery is None else None
            if channel is None:
                channel = channel_for(outgoing, delivery)
            return [await channel.deliver_one(outgoing)]
        outcomes: list[Result | None] = [None] * len(handled)
        # Per channel: the events' places in the batch and their outgoing items, as two
        # lists (no tuple per event); without a preference each route's default channel.
        groups: dict[Channel, tuple[list[int], list[Outgoing]]] = {}
        defaults = self._dispatch.defaults if delivery is None else None
        outgoing_for = self._router.outgoing
        for i, item in enumerate(handled):
            event = item.event
            if event.kind == "domain" or item.rejection is not None:
                continue
            try:
                outgoing = outgoing_for(event)
            except BridgeError as exc:
                outcomes[i] = exc
                continue
            channel = (
                defaults[outgoing.route]
                if defaults is not None
                else channel_for(outgoing, delivery)
            )
            group = groups.get(channel)
            if group is None:
                group = groups[channel] = ([], [])
            group[0].append(i)
            group[1].append(outgoing)
        if not groups:
            return outcomes
        self._require_started()

        async def deliver(channel: Channel, items: tuple[list[int], list[Outgoing]]) -> None:
            places, batch = items
            results = await channel.deliver(batch)
            for i, result in zip(places, results, strict=True):
                outcomes[i] = result

        if len(groups) == 1:
            await deliver(*next(iter(groups.items())))
        else:
            await asyncio.gather(*(deliver(c, items) for c, items in groups.items()))
        return outcomes

    def _require_started(self) -> None:
        if not self._life.started:
            raise BridgeError(
                "the bus is not started: use `async with bus:` (or `await bus.start()`) before "
                "emitting notification events",
                code="not_started",
            )

    def _rejected_by_handler(self, handled: _Handled, error: ErrorInfo) -> EmitResult:
        event = handled.event
        log.warning(
            "event %s %s rejected: %s (%s)", event.type, event.id, error.message, error.code
        )
        self._metrics.events_rejected.labels(error.code).inc()
        return EmitResult(event.id, event.type, "rejected", handled.outcomes, error=error)

    def _result(self, handled: _Handled, outcome: Result | None) -> EmitResult:
        event = handled.event
        if isinstance(outcome, Delivery):
            return EmitResult(event.id, event.type, "published", handled.outcomes, [outcome])
        if isinstance(outcome, Spooled):
            return EmitResult(event.id, event.type, "spooled", handled.outcomes)
        assert isinstance(outcome, BridgeError)
        if not isinstance(outcome, SinkError | SpoolError):
            # Sink failures are logged and counted per batch by the Publisher; spool
            # failures by the durable delivery, once per interval (a full disk refuses all).
            self._metrics.error("route", outcome.code)
            log.warning(
                "event %s %s rejected: %s (%s)", event.type, event.id, outcome.message, outcome.code
            )
        self._metrics.events_rejected.labels(outcome.code).inc()
        return EmitResult(
            event.id, event.type, "rejected", handled.outcomes, error=_error_info(outcome)
        )


#: Why ``Prefer: respond-async`` was answered ``published``: only a bus without a
#: spool does that (the rule is in `bridge.dispatch`).
_NO_SPOOL: Final = (
    "Prefer: respond-async was not applied: no route is durable, so there is no spool; "
    "the event was delivered synchronously"
)


def _not_async(result: EmitResult) -> EmitResult:
    if result.status != "published":
        return result
    return msgspec.structs.replace(result, preference_not_applied=_NO_SPOOL)
