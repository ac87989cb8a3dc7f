"""``/healthz``, ``/readyz`` and ``/metrics``: on the metrics listener and every API listener."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from bridge import tracing
from bridge.server.errors import RETRY_AFTER_S, json_response
from bridge.server.state import Sidecar

_ALIVE = b'{"status":"ok"}'
OPENMETRICS = openmetrics.CONTENT_TYPE_LATEST


class Probes:
    """Liveness, readiness and the Prometheus scrape endpoint."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar

    async def healthz(self, request: web.Request) -> web.Response:
        """200 while the process runs and its event loop answers."""
        return web.Response(body=_ALIVE, content_type="application/json")

    async def readyz(self, request: web.Request) -> web.Response:
        """200 only when running and every sink's (cached) health check passes; else 503."""
        ready, body = await self.sidecar.readiness()
        if ready:
            return json_response(body)
        return json_response(body, 503, {"Retry-After": RETRY_AFTER_S})

    async def metrics(self, request: web.Request) -> web.Response:
        """Every collector of the sidecar's bus (`Sidecar.metrics`) in Prometheus text
        format; while tracing is on, OpenMetrics (with the exemplars tracing leaves on
        the duration histograms) when the scrape asks for it. Off, the scrape stays text
        whatever it asks (Prometheus prefers OpenMetrics, whose ``_created`` series
        would otherwise appear)."""
        registry = self.sidecar.metrics.registry
        accept = request.headers.get("Accept", "")
        if tracing.TRACER is not None and "application/openmetrics-text" in accept:
            body, content_type = openmetrics.generate_latest(registry), OPENMETRICS  # type: ignore[no-untyped-call]
        else:
            body, content_type = generate_latest(registry), CONTENT_TYPE_LATEST
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response
