"""All the sources of one config, run into one bus: built, started, stopped together.

The sidecar (`bridge.server.state.Sidecar`) builds a `Sources` at config load (so
a missing secret stops ``serve`` with its key path), starts it after the bus and
stops it before the bus: consuming stops first, events in flight get the
sources' ``grace_s``, then the sinks their deliveries need are stopped.
In-process users do the same around their own `Bus`:

```python
async with Bus(config) as bus, Sources(config.sources, bus):
    ...
```
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final, Self

from bridge.sinks.base import Health
from bridge.sources.base import Source, SourceConfig, get_source_type
from bridge.sources.runner import Emitter, Runner

log = logging.getLogger("bridge.sources")

_HEALTH_TIMEOUT_S: Final = 5.0
#: How often consumer lag is asked of the brokers (``evbridge_consumer_lag``): one
#: cheap call per source (a passive declare, a consumer info, local Kafka positions).
LAG_INTERVAL_S: Final = 5.0


class Sources:
    """The sources of ``configs``, each with its `Runner` into ``bus``."""

    def __init__(self, configs: Sequence[SourceConfig], bus: Emitter) -> None:
        self.bus = bus
        self.configs = tuple(configs)
        self.sources: dict[str, Source] = {}
        self.runners: dict[str, Runner] = {}
        for config in self.configs:
            self.sources[config.name] = get_source_type(config.type).factory(config, bus.metrics)
            self.runners[config.name] = Runner(bus, config)
        self._started: list[Source] = []
        #: The stop in progress: a second `stop` waits for it rather than return early.
        self._stopping: asyncio.Future[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self.lag_interval_s = LAG_INTERVAL_S

    async def start(self) -> None:
        """Start every source (after the bus: their events need its sinks). A source
        whose broker is away does not fail this; one that raises stops the others."""
        self._stopping = None
        for name, source in self.sources.items():
            try:
                await source.start(self.runners[name].deliver)
            except BaseException:
                await self.stop()
                raise
            self._started.append(source)
            log.info("source %s (%s) started", name, self.sources[name].__class__.__name__)
        if self._started:
            self._lag_task = asyncio.create_task(self._sample_lag(), name="consumer lag")

    async def stop(self) -> None:
        """Stop every started source (concurrently): fetching stops, events in flight
        get ``grace_s``, the rest is left unacknowledged for redelivery. A call while a
        stop is in progress waits for that one."""
        await asyncio.shield(self.begin_stop())

    def begin_stop(self) -> asyncio.Future[None]:
        """Start stopping (fetching stops at once) without waiting; `stop` waits for it.
        The sidecar calls this as shutdown begins, so consuming stops beside the drain."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        return self._stopping

    async def _stop(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
            self._lag_task = None
        started, self._started = self._started, []
        results = await asyncio.gather(*(s.stop() for s in started), return_exceptions=True)
        for source, result in zip(started, results, strict=True):
            if isinstance(result, Exception):
                log.warning("source %s did not stop cleanly: %s", source.name, result)

    async def sample_lag(self) -> None:
        """Ask each source that reports it (a ``lag()`` method, plain or async) for its
        consumer lag, into the gauge; a source that cannot say now (disconnected, timed
        out) keeps its last value."""
        gauge = self.bus.metrics.consumer_lag

        async def one(name: str, source: Source) -> None:
            lag = getattr(source, "lag", None)
            if lag is None:
                return
            try:
                # A source may know its lag locally (a plain method) or ask its broker.
                value = lag()
                if inspect.isawaitable(value):
                    value = await asyncio.wait_for(value, _HEALTH_TIMEOUT_S)
            except Exception as exc:
                log.debug("source %s: consumer lag not sampled: %s", name, exc)
                return
            if value is not None:
                gauge.labels(name).set(value)

        await asyncio.gather(*(one(n, s) for n, s in self.sources.items()))

    async def _sample_lag(self) -> None:
        while True:
            await self.sample_lag()
            await asyncio.sleep(self.lag_interval_s)

    async def health(self) -> dict[str, Health]:
        """Every source's health check, concurrently, each bounded in time."""

        async def check(source: Source) -> Health:
            try:
                return await asyncio.wait_for(source.healthcheck(), _HEALTH_TIMEOUT_S)
            except TimeoutError:
                return Health(
                    ok=False, detail=f"health check timed out after {_HEALTH_TIMEOUT_S:g}s"
                )
            except Exception as exc:
                return Health(ok=False, detail=f"{type(exc).__name__}: {exc}")

        results = await asyncio.gather(*(check(s) for s in self.sources.values()))
        return dict(zip(self.sources, results, strict=True))

    def describe(self) -> list[dict[str, Any]]:
        """Each source's name, type and what it consumes, for ``/v1/info`` (no secrets)."""
        out = []
        for config in self.configs:
            source = self.sources[config.name]
            describe = getattr(source, "describe", None)
            out.append(
                describe() if callable(describe) else {"name": config.name, "type": config.type}
            )
        return out

    async def check(self, timeout: float) -> list[tuple[str, Health]]:  # noqa: ASYNC109
        """For ``evbridge check``: each source's connectivity, without consuming anything
        (a source type without ``check()`` is only built, which checks its secrets)."""

        async def one(config: SourceConfig) -> tuple[str, Health]:
            what = f"source {config.name} ({config.type})"
            check = getattr(self.sources[config.name], "check", None)
            if check is None:
                return what, Health(ok=True, detail="built (no connectivity check)")
            try:
                health: Health = await asyncio.wait_for(check(), timeout)
            except TimeoutError:
                health = Health(ok=False, detail=f"did not answer within {timeout:g}s")
            return what, health

        return list(await asyncio.gather(*(one(c) for c in self.configs)))

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
