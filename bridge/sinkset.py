"""The sinks of a bus and what delivers to them: `SinkSet`, built from the config,
started together and stopped in order (a part of `bridge.bus.Bus`); with them the
application's HTTP endpoints (`bridge.webhooks`), whose connections close first."""

from __future__ import annotations

import asyncio
import logging

from bridge.config import Config
from bridge.delivery import Publisher
from bridge.dispatch import Dispatch
from bridge.durable import DurableDelivery
from bridge.errors import BridgeError
from bridge.handlers import HandlerRegistry
from bridge.metrics import Metrics
from bridge.sinks.base import MetricsAware, Sink, get_sink_type
from bridge.webhooks.handler import Endpoints

log = logging.getLogger("bridge.bus")


class SinkSet:
    """One sink and one `Publisher` per configured sink, and each route's choice between
    publishing now and spooling (`Dispatch`, with `DurableDelivery` when a route needs it).

    ``endpoints``: the ``handlers.http`` endpoints, added to ``registry`` as handlers.
    """

    def __init__(self, config: Config, metrics: Metrics, registry: HandlerRegistry) -> None:
        handlers = config.handlers
        self.endpoints = Endpoints(handlers.http, registry, default_timeout_s=handlers.timeout_s)
        self.sinks: dict[str, Sink] = {}
        self.publishers: dict[str, Publisher] = {}
        for sink_config in config.sinks:
            sink_type = get_sink_type(sink_config.type)
            sink = sink_type.factory(sink_config)
            if isinstance(sink, MetricsAware):
                sink.bind_metrics(metrics)  # before start: its gauges go to this bus
            self.sinks[sink_config.name] = sink
            self.publishers[sink_config.name] = Publisher(
                sink, coalesce=sink_type.coalesce, metrics=metrics
            )
        durable = (
            DurableDelivery(config, self.publishers, metrics=metrics)
            if DurableDelivery.needed(config)
            else None
        )
        self.dispatch = Dispatch(config, self.publishers, durable)

    async def start(self) -> None:
        """Start every sink (concurrently), then durable delivery. A sink that fails to
        start stops the others; its error is raised (a `BridgeError` naming it)."""
        results = await asyncio.gather(
            *(s.start() for s in self.sinks.values()), return_exceptions=True
        )
        failed = [
            (name, r)
            for name, r in zip(self.sinks, results, strict=True)
            if isinstance(r, BaseException)
        ]
        if failed:
            await self._stop_sinks()
            name, exc = failed[0]
            if isinstance(exc, BridgeError):
                raise exc
            raise BridgeError(
                f"sink {name!r} failed to start: {type(exc).__name__}: {exc}", code="sink_start"
            ) from exc
        try:
            await self.dispatch.start()
        except BaseException:
            await self._stop_sinks()
            raise

    async def stop(self, grace_s: float) -> None:
        """Let delivery drain what was accepted (up to ``grace_s``), wait for publishes in
        flight, then stop every sink; one that does not stop cleanly is logged. The HTTP
        endpoints' connections close first: no handler runs any more."""
        await self.endpoints.close()
        await self.dispatch.stop(grace_s)
        await asyncio.gather(
            *(p.wait_idle() for p in self.publishers.values()), return_exceptions=True
        )
        results = await self._stop_sinks()
        for name, result in zip(self.sinks, results, strict=True):
            if isinstance(result, Exception):
                log.warning("sink %s did not stop cleanly: %s", name, result)

    async def _stop_sinks(self) -> list[BaseException | None]:
        return await asyncio.gather(
            *(s.stop() for s in self.sinks.values()), return_exceptions=True
        )
