"""The event bus: handlers, routing and delivery, usable in-process with no server.

```python
async with Bus(config) as bus:
    result = await bus.emit(Event(type="invite.accepted", data={...}))
```
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import logging
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Self

from bridge.businfo import BusInfo
from bridge.config import Config, parse_config
from bridge.event import Event
from bridge.eventpath import EventPath, Lifecycle
from bridge.handlers import Handler, HandlerRegistry, import_modules, open_for
from bridge.handlers import (
    registry as default_registry,
)
from bridge.hub import Hub, SubscriberBudget
from bridge.loopwatch import LoopWatch
from bridge.metrics import METRICS, Metrics
from bridge.middleware import Middleware
from bridge.middleware import check as check_middleware
from bridge.middleware import load as load_middleware
from bridge.pipeline import Watchdog
from bridge.policy import OnError, check_on_error
from bridge.policy import raise_errors as raise_errors_of
from bridge.prefer import Preference
from bridge.resources import OpenResources
from bridge.results import EmitResult
from bridge.routing import Router
from bridge.sends import Sends
from bridge.sinks.base import Sink
from bridge.sinkset import SinkSet
from bridge.spoolview import SpoolView
from bridge.subscriptions import Overflow, Subscription
from bridge.threads import HandlerThreads
from bridge.typed import EventData, pattern_of

log = logging.getLogger("bridge.bus")

#: ``Bus()``'s config: events stay in memory (the sidecar's default writes a file).
_IN_MEMORY: dict[str, Any] = {
    "sinks": [{"name": "memory", "type": "memory"}],
    "routes": [{"name": "all", "match": "*", "sink": "memory"}],
}

_CURRENT: contextvars.ContextVar[Bus | None] = contextvars.ContextVar(
    "evbridge_current_bus", default=None
)


def current_bus() -> Bus:
    """The bus running the current handler, or whose ``async with`` block this is in.

    For code that does not pass the bus around. A `LookupError` elsewhere.
    """
    bus = _CURRENT.get()
    if bus is None:
        raise LookupError(
            "no current bus: current_bus() works inside a handler and inside `async with bus:`"
        )
    return bus


class Bus(SpoolView, BusInfo):
    """Runs handlers for events and publishes notification events to sinks.

    ``Bus()`` keeps events in memory (one ``memory`` sink, route ``"*"``);
    nothing is written to the working directory (``evbridge serve`` with no
    config keeps its ``file`` sink). Handlers registered with ``@on`` are seen by every bus; the
    modules named in ``handlers.modules`` (and the ``evbridge.handlers``
    entry-point group) are imported when the bus is built. `subscribe`
    adds handlers to this bus only.

    Events whose ``source`` is unset get the config's ``source``, filled in on
    the event object itself before any handler sees it.

    ``metrics`` (default: the module-level `bridge.metrics.METRICS`) is where
    this bus counts; buses given their own keep their own series and gauges.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        registry: HandlerRegistry | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config if config is not None else parse_config(_IN_MEMORY, env={})
        handlers = self.config.handlers
        import_modules(
            handlers.modules,
            path=handlers.path,
            entry_point_group="evbridge.handlers" if handlers.entry_points else None,
        )
        self.metrics = metrics if metrics is not None else METRICS
        self.registry = HandlerRegistry(parent=registry or default_registry)
        self.router = Router(self.config.routes)
        #: Sinks, publishers, routes' sync or spooled choice, ``handlers.http`` endpoints.
        self._sinkset = SinkSet(self.config, self.metrics, self.registry)
        self.endpoints = self._sinkset.endpoints
        self.sinks: dict[str, Sink] = self._sinkset.sinks
        self._dispatch = self._sinkset.dispatch
        self._timeout = handlers.timeout_s
        self._concurrency = handlers.concurrency
        #: Runs the plain ``def`` handlers (never the loop's default executor).
        self._threads = HandlerThreads(handlers.threads, metrics=self.metrics)
        self._watchdog = Watchdog()
        self._loopwatch = (
            LoopWatch(self._watchdog, warn_after_s=handlers.loop_warn_s, metrics=self.metrics)
            if handlers.loop_warn_s > 0
            else None
        )
        self._life = Lifecycle()
        #: Opened at `start` for the handlers that depend on them (`bridge.resources`).
        self._resources = OpenResources()
        self._sent = Sends(self.metrics)
        self._ambient: list[contextvars.Token[Bus | None]] = []
        #: Wrapped around every handler call, in order (`use`, ``handlers.middleware``).
        self._middleware: list[Middleware] = load_middleware(handlers.middleware)
        self._path = EventPath(
            registry=self.registry,
            router=self.router,
            dispatch=self._dispatch,
            life=self._life,
            watchdog=self._watchdog,
            threads=self._threads,
            metrics=self.metrics,
            source=self.config.source,
            timeout_s=handlers.timeout_s,
            cancel_grace_s=handlers.cancel_grace_s,
            max_depth=handlers.max_depth,
            middleware=self._middleware,
            resources=self._resources,
        )
        limits = self.config.limits
        self._hub = Hub(
            self.metrics,
            SubscriberBudget(limits.max_total_subscriber_bytes, limits.max_subscriber_bytes),
        )
        self.name = "root"

    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Open the resources the handlers depend on, then start every sink (concurrently).

        A resource that fails to open, or a sink that fails to start, stops the others.
        """
        if self._life.started:
            return
        await self.open_resources()
        try:
            await self._sinkset.start()
        except BaseException:
            await self._resources.close()
            raise
        self._life.started = True
        if self._loopwatch is not None:
            self._loopwatch.start()
        if not self.sinks and not self.config.routes:
            # Most often a config file that was not the one meant (empty, or the wrong path).
            log.warning(
                "the config has no sinks and no routes: handlers run, but every "
                "notification event is refused with no_route (docs/configuration.md)",
                extra={"sinks": 0, "routes": 0},
            )

    async def open_resources(self) -> int:
        """Open what the handlers' ``Depends`` on `bridge.resources` ask for, then build the
        handler classes that wait for a start (`bridge.classes`); `start` does. Returns how
        many resources opened."""
        return await open_for(self._resources, self.registry.all())

    async def close_resources(self) -> None:
        """Close the open resources, last opened first (`stop` does)."""
        await self._resources.close()

    async def stop(self) -> None:
        """Wait for publishes in flight, then stop every sink.

        Handler threads still busy are named in one warning and left behind
        (`bridge.threads`).
        """
        if not self._life.started:
            return
        self._life.started = False
        # Events handed to `send` still running: they finish (or are logged) first.
        await self._sent.wait(self.config.shutdown.grace_s)
        # First, so that the report comes even if a sink then takes too long to stop.
        self._threads.close()
        # What was accepted is on disk; delivery gets shutdown.grace_s to drain it.
        await self._sinkset.stop(self.config.shutdown.grace_s)
        await self._resources.close()
        self._watchdog.close()
        if self._loopwatch is not None:
            self._loopwatch.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        # `current_bus()` in the body (a contextvar: this task and what it starts).
        self._ambient.append(_CURRENT.set(self))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ambient:
            with contextlib.suppress(ValueError):  # exited in another context than entered
                _CURRENT.reset(self._ambient.pop())
        await self.stop()

    @property
    def started(self) -> bool:
        return self._life.started

    # --- scopes and subscriptions -------------------------------------------

    def scope(self, name: str, *, shared: bool = False) -> Bus:
        """A child bus sharing this bus's sinks, handlers and lifecycle.

        Its subscriptions see only events emitted through it (and it does not
        see the parent's), unless ``shared=True``, when both share one stream.
        """
        child = copy.copy(self)
        child.name = f"{self.name}/{name}"
        # Scopes share one bound in bytes: memory is the process's, not a scope's.
        child._hub = self._hub if shared else Hub(self.metrics, self._hub.budget)
        return child

    def subscription(
        self,
        *patterns: str | type[EventData],
        max_queue: int = 1000,
        overflow: Overflow = "drop_oldest",
        max_queue_bytes: int | None = None,
    ) -> Subscription:
        """Subscribe to events of this scope whose type matches any glob in ``patterns``.

        Use as ``async with bus.subscription("order.*") as events: async for n in events``.
        ``max_queue_bytes`` defaults to ``limits.max_subscriber_bytes``; all
        subscriptions of the bus share ``limits.max_total_subscriber_bytes``.
        See `bridge.subscriptions` for the queueing and overflow guarantees.
        """
        subscription = Subscription(
            self._hub,
            tuple(pattern_of(p)[0] for p in patterns),
            max_queue=max_queue,
            overflow=overflow,
            max_queue_bytes=max_queue_bytes,
        )
        # Live from this line: an event emitted before ``async with`` is not missed.
        self._hub.add(subscription)
        return subscription

    @property
    def subscriber_budget(self) -> SubscriberBudget:
        """The bytes all subscriptions of this bus (and its scopes) hold, and their bound."""
        return self._hub.budget

    # --- handlers -----------------------------------------------------------

    def subscribe(
        self,
        pattern: str | type[EventData],
        fn: Callable[..., Any],
        *,
        priority: int = 0,
        timeout: float | None = None,
        data: type[Any] | None = None,
        name: str | None = None,
        inline: bool = False,
        on_error: OnError | None = None,
    ) -> Handler:
        """Add a handler to this bus at runtime (same options as ``@on``)."""
        return self.registry.add(
            Handler(
                fn,
                pattern,
                priority=priority,
                timeout=timeout,
                data=data,
                name=name,
                inline=inline,
                on_error=on_error,
            )
        )

    def use(self, middleware: Middleware) -> None:
        """Wrap every handler call of this bus (and its scopes) in ``middleware``, an
        ``async def mw(call, handler, event, ctx)``; added last, it runs innermost.
        See `bridge.middleware`."""
        self._middleware.append(check_middleware(middleware))

    def unsubscribe(self, pattern: str | type[EventData], fn: Callable[..., Any]) -> None:
        """Remove a handler added with `subscribe`; a no-op if it never was."""
        self.registry.remove(pattern, fn)

    # --- emitting -----------------------------------------------------------

    async def emit(
        self,
        event: Event | EventData,
        *,
        delivery: Preference | None = None,
        on_error: OnError | None = None,
        raise_errors: bool = False,
    ) -> EmitResult:
        """Run the handlers for ``event``, then publish it if it is a notification.

        Returns its `EmitResult` (with the results of its follow-ups). Failures
        of handlers and sinks are in the result; only misuse raises.
        ``delivery`` (a request's ``Prefer``) chooses sync or durable delivery
        for it and its follow-ups, where ``delivery.allow_override`` permits
        (the rule is in `bridge.dispatch`). ``on_error`` is the error policy
        (``continue``, ``stop``, ``reject``; `bridge.policy`) of the handlers
        without their own, for it and its follow-ups. With ``raise_errors``,
        the handlers' errors (its follow-ups' included) are raised as one
        `BaseExceptionGroup` once everything ran.
        """
        check_on_error(on_error, where="emit()")
        errors: list[BaseException] | None = [] if raise_errors else None
        token = _CURRENT.set(self) if _CURRENT.get() is not self else None
        try:
            result = (
                await self._path.run(
                    (event,), 0, self._concurrency, delivery, self._hub, on_error, errors
                )
            )[0]
        finally:
            if token is not None:
                _CURRENT.reset(token)
        if errors:
            raise_errors_of(result, errors)
        return result

    def send(
        self,
        event: Event | EventData,
        *,
        delivery: Preference | None = None,
        on_error: OnError | None = None,
    ) -> asyncio.Task[EmitResult]:
        """Emit ``event`` in the background: fire and forget, no ``await`` needed.

        Returns the task, which the caller may await for the `EmitResult`. An
        exception it ends with (the bus is not started, a misuse) is logged and
        counted (``evbridge_errors_total{stage="send"}``) whether or not anyone
        awaits it; handler and sink failures are in the result and logged as
        for `emit`. `stop` waits for sends still running (up to ``shutdown.grace_s``).
        """
        check_on_error(on_error, where="send()")
        return self._sent.start(self.emit(event, delivery=delivery, on_error=on_error))

    async def emit_many(
        self,
        events: Iterable[Event | EventData],
        *,
        concurrency: int | None = None,
        delivery: Preference | None = None,
        on_error: OnError | None = None,
    ) -> list[EmitResult]:
        """Emit a batch; results come back in input order.

        Up to ``concurrency`` (default ``handlers.concurrency``) events have
        their handlers running at once; each event's handlers stay sequential.
        Notification events are then delivered in input order, one call per
        sink and delivery mode, so events with the same key keep their order.
        ``on_error`` is as for `emit`.
        """
        check_on_error(on_error, where="emit_many()")
        token = _CURRENT.set(self) if _CURRENT.get() is not self else None
        try:
            return await self._path.run(
                list(events), 0, concurrency or self._concurrency, delivery, self._hub, on_error
            )
        finally:
            if token is not None:
                _CURRENT.reset(token)

    # --- introspection ------------------------------------------------------

    def handlers(self) -> list[Handler]:
        """Every handler this bus runs, in run order."""
        return self.registry.all()
