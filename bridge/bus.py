"""The event bus: handlers, routing and delivery, usable in-process with no server.

```python
async with Bus(config) as bus:
    result = await bus.emit(Event(type="invite.accepted", data={...}))
```
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

import msgspec

from bridge.config import Config, load_config
from bridge.delivery import Publisher
from bridge.dispatch import Dispatch
from bridge.durable import DurableDelivery
from bridge.errors import BridgeError, SpoolError
from bridge.event import Event
from bridge.eventpath import EventPath, Lifecycle
from bridge.handlers import Handler, HandlerRegistry, import_modules
from bridge.handlers import (
    registry as default_registry,
)
from bridge.loopwatch import LoopWatch
from bridge.metrics import METRICS, Metrics
from bridge.middleware import Middleware
from bridge.middleware import check as check_middleware
from bridge.middleware import load as load_middleware
from bridge.pipeline import Watchdog
from bridge.policy import OnError, check_on_error
from bridge.policy import raise_errors as raise_errors_of
from bridge.prefer import Preference
from bridge.results import EmitResult
from bridge.routing import Router
from bridge.sinks.base import Health, Sink, get_sink_type
from bridge.subscriptions import Hub, Overflow, SubscriberBudget, Subscription
from bridge.threads import HandlerThreads
from bridge.typed import EventData, pattern_of
from bridge.webhooks.handler import Endpoints

log = logging.getLogger("bridge.bus")

_HEALTH_TIMEOUT_S = 5.0


class Bus:
    """Runs handlers for events and publishes notification events to sinks.

    ``Bus()`` uses the embedded default config (one ``file`` sink, route
    ``"*"``). Handlers registered with ``@on`` are seen by every bus; the
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
        self.config = config if config is not None else load_config(env={})
        handlers = self.config.handlers
        import_modules(
            handlers.modules,
            entry_point_group="evbridge.handlers" if handlers.entry_points else None,
        )
        self.metrics = metrics if metrics is not None else METRICS
        self.registry = HandlerRegistry(parent=registry or default_registry)
        #: ``handlers.http``: the application's endpoints as handlers (`bridge.webhooks`).
        self.endpoints = Endpoints(
            handlers.http, self.registry, default_timeout_s=handlers.timeout_s
        )
        self.router = Router(self.config.routes)
        self.sinks: dict[str, Sink] = {}
        self._publishers: dict[str, Publisher] = {}
        for sink_config in self.config.sinks:
            sink_type = get_sink_type(sink_config.type)
            sink = sink_type.factory(sink_config)
            self.sinks[sink_config.name] = sink
            self._publishers[sink_config.name] = Publisher(
                sink, coalesce=sink_type.coalesce, metrics=self.metrics
            )
        durable = (
            DurableDelivery(self.config, self._publishers, metrics=self.metrics)
            if DurableDelivery.needed(self.config)
            else None
        )
        #: Each route's choice between publishing now and spooling (`bridge.dispatch`).
        self._dispatch = Dispatch(self.config, self._publishers, durable)
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
        )
        limits = self.config.limits
        self._hub = Hub(
            SubscriberBudget(limits.max_total_subscriber_bytes, limits.max_subscriber_bytes)
        )
        self.name = "root"

    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Start every sink (concurrently). A sink that fails to start stops the others."""
        if self._life.started:
            return
        results = await asyncio.gather(
            *(s.start() for s in self.sinks.values()), return_exceptions=True
        )
        failed = [
            (name, r)
            for name, r in zip(self.sinks, results, strict=True)
            if isinstance(r, BaseException)
        ]
        if failed:
            await asyncio.gather(*(s.stop() for s in self.sinks.values()), return_exceptions=True)
            name, exc = failed[0]
            if isinstance(exc, BridgeError):
                raise exc
            raise BridgeError(
                f"sink {name!r} failed to start: {type(exc).__name__}: {exc}", code="sink_start"
            ) from exc
        try:
            await self._dispatch.start()
        except BaseException:
            await asyncio.gather(*(s.stop() for s in self.sinks.values()), return_exceptions=True)
            raise
        self._life.started = True
        if self._loopwatch is not None:
            self._loopwatch.start()

    async def stop(self) -> None:
        """Wait for publishes in flight, then stop every sink.

        Handler threads still busy are named in one warning and left behind
        (`bridge.threads`).
        """
        if not self._life.started:
            return
        self._life.started = False
        # First, so that the report comes even if a sink then takes too long to stop.
        self._threads.close()
        await self.endpoints.close()
        # What was accepted is on disk; delivery gets shutdown.grace_s to drain it.
        await self._dispatch.stop(self.config.shutdown.grace_s)
        await asyncio.gather(
            *(p.wait_idle() for p in self._publishers.values()), return_exceptions=True
        )
        results = await asyncio.gather(
            *(s.stop() for s in self.sinks.values()), return_exceptions=True
        )
        for name, result in zip(self.sinks, results, strict=True):
            if isinstance(result, Exception):
                log.warning("sink %s did not stop cleanly: %s", name, result)
        self._watchdog.close()
        if self._loopwatch is not None:
            self._loopwatch.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def started(self) -> bool:
        return self._life.started

    # --- durable delivery ---------------------------------------------------

    @property
    def durable(self) -> DurableDelivery | None:
        """The spool and its deliverer, when some route delivers durably; else None."""
        return self._dispatch.durable

    @property
    def has_spool(self) -> bool:
        """True when some route delivers durably, so the bus has a spool."""
        return self._dispatch.durable is not None

    @property
    def honours_prefer(self) -> bool:
        """Whether `emit`'s ``delivery`` (a request's ``Prefer``) counts:
        ``delivery.allow_override``. The rule is in `bridge.dispatch`."""
        return self._dispatch.honours_prefer

    def sinks_behind_spool(self) -> frozenset[str]:
        """Sinks only the background deliverer publishes to (no sync route reaches
        them): while one is down, events are still accepted."""
        durable = self._dispatch.durable
        return durable.sinks_behind_spool() if durable is not None else frozenset()

    def spool_status(self) -> dict[str, object] | None:
        """What waits in the spool (pending, dead letters, disk use, ``full``,
        ``write_error``), for ``/readyz`` and ``/v1/info``; None without a spool."""
        durable = self._dispatch.durable
        return durable.describe() if durable is not None else None

    def spool_refusals(self) -> list[str]:
        """Why the spool refuses new events right now (readiness is 503), if it does."""
        durable = self._dispatch.durable
        reasons: list[str] = []
        if durable is not None and durable.full:
            reasons.append("the spool is full: new events are refused until delivery frees space")
        if durable is not None and durable.write_error is not None:
            reasons.append(f"the spool cannot write: {durable.write_error}")
        return reasons

    async def replay_dead_letters(self, sink: str | None = None) -> int:
        """Move the local dead letters (of ``sink``, or all) back to be delivered again.

        Raises `SpoolError` without a spool (`has_spool` says) or when the spool fails.
        """
        durable = self._dispatch.durable
        if durable is None:
            raise SpoolError("durable delivery is not configured: no spool", code="no_spool")
        return await durable.replay_dead_letters(sink)

    # --- scopes and subscriptions -------------------------------------------

    def scope(self, name: str, *, shared: bool = False) -> Bus:
        """A child bus sharing this bus's sinks, handlers and lifecycle.

        Its subscriptions see only events emitted through it (and it does not
        see the parent's), unless ``shared=True``, when both share one stream.
        """
        child = copy.copy(self)
        child.name = f"{self.name}/{name}"
        # Scopes share one bound in bytes: memory is the process's, not a scope's.
        child._hub = self._hub if shared else Hub(self._hub.budget)
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
        return Subscription(
            self._hub,
            tuple(pattern_of(p)[0] for p in patterns),
            max_queue=max_queue,
            overflow=overflow,
            max_queue_bytes=max_queue_bytes,
        )

    @property
    def subscriber_budget(self) -> SubscriberBudget:
        """The bytes all subscriptions of this bus (and its scopes) hold, and their bound."""
        return self._hub.budget

    async def health(self) -> dict[str, Health]:
        """Every sink's health check, run concurrently, each bounded in time."""

        async def check(sink: Sink) -> Health:
            try:
                return await asyncio.wait_for(sink.healthcheck(), _HEALTH_TIMEOUT_S)
            except TimeoutError:
                return Health(
                    ok=False, detail=f"health check timed out after {_HEALTH_TIMEOUT_S:g}s"
                )
            except Exception as exc:
                return Health(ok=False, detail=f"{type(exc).__name__}: {exc}")

        results = await asyncio.gather(*(check(s) for s in self.sinks.values()))
        return dict(zip(self.sinks, results, strict=True))

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
        result = (
            await self._path.run(
                (event,), 0, self._concurrency, delivery, self._hub, on_error, errors
            )
        )[0]
        if errors:
            raise_errors_of(result, errors)
        return result

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
        return await self._path.run(
            list(events), 0, concurrency or self._concurrency, delivery, self._hub, on_error
        )

    # --- introspection ------------------------------------------------------

    def handlers(self) -> list[Handler]:
        """Every handler this bus runs, in run order."""
        return self.registry.all()

    def describe(self) -> Mapping[str, Any]:
        """Routes and handlers, for ``/v1/info``."""
        return {
            "routes": [
                {
                    "name": r.name,
                    "match": r.match,
                    "sink": r.sink,
                    "key": r.key,
                    **msgspec.to_builtins(r.options),
                }
                for r in self.router.routes
            ],
            "handlers": [
                {
                    "name": h.name,
                    "pattern": h.pattern,
                    "priority": h.priority,
                    "timeout_s": h.timeout or self._timeout,
                }
                for h in self.handlers()
            ],
        }
