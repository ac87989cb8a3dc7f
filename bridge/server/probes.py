"""``/healthz``, ``/readyz`` and ``/metrics``: on the metrics listener and every API listener."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.server.errors import RETRY_AFTER_S, json_response
from bridge.server.state import Sidecar

_ALIVE = b'{"status":"ok"}'


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
        """Every collector of the sidecar's bus (`Sidecar.metrics`) in Prometheus text format."""
        response = web.Response(body=generate_latest(self.sidecar.metrics.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
