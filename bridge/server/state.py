"""The sidecar's shared state: the bus, admission (in-flight limits), phase and readiness.

One `Sidecar` serves every listener (TCP, Unix socket, metrics). Its phase
goes ``starting`` → ``running`` → ``draining`` → ``stopped``; only
``running`` accepts events and answers ``/readyz`` with 200.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import Any, Final, Literal

from bridge.bus import Bus
from bridge.config import Config
from bridge.dedupe import INGEST, IngestDedupe
from bridge.redact import register_config
from bridge.server.errors import ApiError
from bridge.server.limits import ConnectionBudget
from bridge.sinks.base import Health
from bridge.sources import Sources

log = logging.getLogger("bridge.server")

Phase = Literal["starting", "running", "draining", "stopped"]

#: How long a health check result is reused, so probes do not hammer brokers.
HEALTH_TTL_S: Final = 1.0


class Stats:
    """Counters for the shutdown summary line (plain ints on the event loop)."""

    __slots__ = ("accepted", "cancelled", "rejected", "requests")

    def __init__(self) -> None:
        self.requests = 0
        #: Event requests cancelled before they finished (cut off at the shutdown grace limit).
        self.cancelled = 0
        self.accepted = 0
        self.rejected = 0


class Sidecar:
    """The bus plus everything the HTTP side shares across listeners."""

    def __init__(self, config: Config, bus: Bus | None = None) -> None:
        # Before any sink connects: from here on no log line shows these secrets.
        register_config(config)
        self.config = config
        self.bus = bus if bus is not None else Bus(config)
        #: Where the HTTP side counts: the bus's own, so ``/metrics`` scrapes that bus.
        self.metrics = self.bus.metrics
        #: Built now, so that a source's missing secret stops the load (bridge.sources).
        self.sources = Sources(config.sources, self.bus)
        #: ``ingest.dedupe``: shared by the listeners, so a retry on either is caught.
        self.dedupe = (
            IngestDedupe(
                config.ingest.dedupe,
                config.source,
                self.metrics.dedupe_dropped.labels(INGEST).inc,
            )
            if config.ingest.dedupe is not None
            else None
        )
        self.phase: Phase = "starting"
        #: Events admitted and not finished (a batch counts its size).
        self.inflight = 0
        #: Event requests (single or batch) being processed now.
        self.active_requests = 0
        #: Open ``/v1/subscribe`` streams across listeners (bounded by limits.max_subscribers).
        self.sse_streams = 0
        self.max_inflight = config.limits.max_inflight
        #: Bytes of request bodies admitted and not finished (limits.max_inflight_bytes).
        self.inflight_bytes = 0
        self.max_inflight_bytes = config.limits.max_inflight_bytes
        #: Open connections on the TCP and Unix listeners together (limits.max_connections).
        self.api_connections = ConnectionBudget(config.limits.max_connections, "api")
        #: Listener name → address, filled in as listeners open (for /v1/info).
        self.listeners: dict[str, str] = {}
        self.stats = Stats()
        self.started_at = monotonic()
        self._health: dict[str, Health] | None = None
        self._health_at = 0.0
        self._health_task: asyncio.Task[dict[str, Health]] | None = None
        self._idle: asyncio.Event | None = None
        #: The tasks of the event requests being processed (see `cut_off`).
        self._request_tasks: set[asyncio.Task[Any]] = set()
        #: Set once the shutdown grace ran out: cancelled requests answer 503 outcome_unknown.
        self.cutting_off = False

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Start the bus (every sink); the sidecar then accepts events."""
        self.metrics.inflight.set_function(lambda: float(self.inflight))
        self.metrics.inflight_bytes.set_function(lambda: float(self.inflight_bytes))
        await self.bus.start()
        try:
            await self.sources.start()  # after the bus: consumed events need its sinks
        except BaseException:
            await self.bus.stop()
            raise
        self.phase = "running"
        self.started_at = monotonic()
        ready, _ = await self.readiness()
        if not ready:
            log.warning("started, but not ready yet: a sink health check fails")

    def begin_shutdown(self) -> None:
        """Readiness goes 503 and new events are refused with 503."""
        if self.phase in ("draining", "stopped"):
            return
        self.phase = "draining"
        self.metrics.ready.set(0)

    async def stop(self, timeout: float) -> bool:  # noqa: ASYNC109 - a bound, reported when hit
        """Stop the bus (flush and stop sinks) within ``timeout`` s; False if it took longer.

        ``evbridge serve`` passes what is left of ``shutdown.grace_s`` (at least
        `bridge.server.run.STOP_FLOOR_S`): the whole shutdown is bounded, even
        with a broker that never answers. With durable delivery, background
        delivery gets ``grace_s`` more to drain the spool; what it has not
        delivered by then stays there for the next start.
        """
        self.begin_shutdown()
        self.phase = "stopped"
        if self.bus.has_spool:
            # Background delivery gets shutdown.grace_s of its own to drain the spool
            # (docs/durable-delivery.md): the bound is then 2 x grace_s plus the same margin.
            timeout += self.config.shutdown.grace_s
        try:
            # Consuming stops first: events in flight finish while the sinks still run.
            await asyncio.wait_for(self.sources.stop(), timeout)
        except TimeoutError:
            log.warning("sources did not stop within %.1fs", timeout)
        try:
            await asyncio.wait_for(self.bus.stop(), timeout)
        except TimeoutError:
            log.warning("sinks did not stop within %.1fs", timeout)
            return False
        return True

    @property
    def accepting(self) -> bool:
        return self.phase == "running"

    # --- admission --------------------------------------------------------------

    def admit(self, count: int, size: int = 0) -> None:
        """Reserve ``count`` in-flight events and ``size`` bytes of body, or raise 429
        (over either limit) / 503 (not running).

        The caller must give them back with ``release(count, size)``.
        """
        if self.phase != "running":
            if self.phase == "starting":
                raise ApiError(503, "not_started", "evbridge is starting; retry shortly")
            raise ApiError(
                503, "shutting_down", "evbridge is shutting down; send to another instance"
            )
        if self.inflight + count > self.max_inflight:
            raise ApiError(
                429,
                "overloaded",
                f"{self.inflight} events are in flight; limits.max_inflight is {self.max_inflight}",
            )
        if size and self.inflight_bytes + size > self.max_inflight_bytes:
            raise ApiError(
                429,
                "overloaded",
                f"{self.inflight_bytes} bytes of requests are in flight and this one needs "
                f"{size}; limits.max_inflight_bytes is {self.max_inflight_bytes}",
            )
        self.inflight += count
        self.inflight_bytes += size

    def release(self, count: int, size: int = 0) -> None:
        self.inflight -= count
        self.inflight_bytes -= size

    def request_started(self) -> None:
        self.active_requests += 1
        task = asyncio.current_task()
        if task is not None:
            self._request_tasks.add(task)

    def request_done(self) -> None:
        self.active_requests -= 1
        task = asyncio.current_task()
        if task is not None:
            self._request_tasks.discard(task)
        if self._idle is not None and not self.active_requests:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:  # noqa: ASYNC109 - a bound, reported when hit
        """Wait until no event request is in flight; False if ``timeout`` s passed first."""
        if not self.active_requests:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def cut_off(self) -> int:
        """The grace period is over: cancel every event request still in flight.

        Each answers ``503 outcome_unknown`` (`absorb_cut_off`) instead of having
        its connection dropped: its events may or may not have been published.
        Returns how many were cut off.
        """
        self.cutting_off = True
        tasks = [task for task in self._request_tasks if not task.done()]
        for task in tasks:
            task.cancel("cut off at the shutdown grace limit")
        return len(tasks)

    def absorb_cut_off(self) -> bool:
        """In a request's ``except CancelledError``: True if the cancellation was `cut_off`'s
        alone, which is then undone so the request can answer; False means re-raise."""
        task = asyncio.current_task()
        if not self.cutting_off or task is None or task.cancelling() != 1:
            return False
        task.uncancel()
        return True

    # --- health ------------------------------------------------------------------

    async def health(self) -> dict[str, Health]:
        """Every sink's health, cached for `HEALTH_TTL_S`; concurrent callers share one check."""
        if self._health is not None and monotonic() - self._health_at < HEALTH_TTL_S:
            return self._health
        task = self._health_task
        if task is None:
            task = self._health_task = asyncio.ensure_future(self._check_health())
        return await asyncio.shield(task)

    async def _check_health(self) -> dict[str, Health]:
        try:
            result = await self.bus.health()
            self._health, self._health_at = result, monotonic()
            return result
        finally:
            self._health_task = None

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, body) for ``/readyz``; also sets the ``evbridge_ready`` gauge."""
        reasons: list[str] = []
        sinks: dict[str, dict[str, Any]] = {}
        sources: dict[str, dict[str, Any]] = {}
        # A sink reached only through the spool does not hold events up when it is down.
        behind_spool = self.bus.sinks_behind_spool()
        if self.phase == "running":
            for name, health in (await self.health()).items():
                sinks[name] = {"ok": health.ok, "detail": health.detail}
                if not health.ok and name not in behind_spool:
                    reasons.append(f"sink {name}: {health.detail or 'health check failed'}")
            for name, health in (await self.sources.health()).items():
                sources[name] = {"ok": health.ok, "detail": health.detail}
                if not health.ok:
                    reasons.append(f"source {name}: {health.detail or 'health check failed'}")
        reasons.extend(self.bus.spool_refusals())
        reasons.extend(self.bus.endpoints.not_ready())
        # The phase is read after the health check, which may have awaited a shutdown.
        if self.phase == "starting":
            reasons.append("starting: sinks are not started yet")
        elif self.phase != "running":
            reasons.append("shutting down: not accepting events")
        ready = not reasons
        self.metrics.ready.set(1 if ready else 0)
        body: dict[str, Any] = {"ready": ready, "phase": self.phase, "sinks": sinks}
        if sources:
            body["sources"] = sources
        spool = self.bus.spool_status()
        if spool is not None:
            body["spool"] = spool
        if self.bus.endpoints.endpoints:
            body["http_handlers"] = self.bus.endpoints.status()
        if not ready:
            body["not_ready"] = reasons
        return ready, body
