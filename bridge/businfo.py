"""What a bus tells about itself: sink health and its routes and handlers
(`BusInfo`, a part of `bridge.bus.Bus`)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from bridge.handlers import Handler
from bridge.routing import Router
from bridge.sinks.base import Health, Sink

_HEALTH_TIMEOUT_S: Final = 5.0


class BusInfo:
    """Health checks and ``/v1/info``'s description."""

    sinks: dict[str, Sink]
    router: Router
    _timeout: float

    def handlers(self) -> list[Handler]:
        raise NotImplementedError  # the bus's

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
                    # What its failure does to an event sent over the API (no emit policy).
                    "on_error": h.on_error or "continue",
                }
                for h in self.handlers()
            ],
        }
