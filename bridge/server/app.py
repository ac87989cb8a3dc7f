"""The aiohttp applications: one per listener, all sharing one `Sidecar`.

``create_app(sidecar, "tcp" | "unix")`` serves the API plus the probes;
``create_app(sidecar, "metrics")`` serves only ``/metrics``, ``/healthz`` and
``/readyz``. Handlers find the sidecar under `SIDECAR` (a typed ``AppKey``),
so routes added elsewhere (say, spool administration) can reach it.

`standalone_app` builds a self-contained API app whose ``cleanup_ctx``
starts and stops the sidecar, for embedding and aiohttp's test client; the
``evbridge serve`` command instead drives the lifecycle itself
(`bridge.server.run`), because shutdown must be ordered across listeners.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from time import perf_counter
from typing import Final, Literal

from aiohttp import web
from prometheus_client import Histogram

from bridge.bus import Bus
from bridge.config import Config
from bridge.server.api import Api
from bridge.server.auth import BearerAuth
from bridge.server.connections import CONNECTION_GUARD, ConnectionGuard, connection_limits
from bridge.server.errors import ApiError, error_response, from_api_error, from_http_exception
from bridge.server.gate import Middleware, admission, require_token
from bridge.server.limits import ConnectionBudget, Throttled
from bridge.server.paths import BATCH_PATH, EVENTS_PATH, PROBE_PATHS
from bridge.server.probes import Probes
from bridge.server.requestid import install as install_request_ids
from bridge.server.requestid import request_ids
from bridge.server.spool_admin import add_spool_routes
from bridge.server.state import Sidecar
from bridge.server.subscribe import add_subscribe_routes
from bridge.server.tracemw import traced

log = logging.getLogger("bridge.server")

Listener = Literal["tcp", "unix", "metrics"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SIDECAR: Final = web.AppKey("sidecar", Sidecar)
LISTENER: Final = web.AppKey("listener", str)


#: Methods this server knows (RFC 9110 plus PATCH): others are 501, not 405 or 404.
KNOWN_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


_log_not_implemented: Final = Throttled(
    logging.INFO, "request refused with 501: a method this server does not implement"
)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as a JSON body: router misses, body limits, and anything unforeseen."""
    # Counted in the sidecar's metrics (its bus's), read per error: errors are rare.
    if request.method not in KNOWN_METHODS:
        request.app[SIDECAR].metrics.error("ingest", "not_implemented")
        _log_not_implemented(method=request.method[:32])
        return error_response(
            501,
            "not_implemented",
            f"method {request.method[:32]!r} is not implemented by this server",
            field="method",
        )
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return from_http_exception(exc)
    except ApiError as exc:
        return from_api_error(exc)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        request.app[SIDECAR].metrics.error("ingest", "internal_error")
        return error_response(500, "internal_error", "evbridge failed to answer; see its log")


def _timed(handler: Handler, child: Histogram) -> Handler:
    async def timed(request: web.Request) -> web.StreamResponse:
        start = perf_counter()
        try:
            return await handler(request)
        finally:
            child.observe(perf_counter() - start)

    return timed


def _add_probes(app: web.Application, sidecar: Sidecar, transport: str) -> None:
    probes = Probes(sidecar)
    handlers = {"healthz": probes.healthz, "readyz": probes.readyz, "metrics": probes.metrics}
    for path in PROBE_PATHS:
        name = path.lstrip("/")
        child = sidecar.metrics.request_duration.labels(transport, name)
        app.router.add_get(path, _timed(handlers[name], child))


def create_app(sidecar: Sidecar, listener: Listener) -> web.Application:
    """The aiohttp application for one listener.

    Every request passes, in order: its request id, the connection's deadlines, while
    tracing is on the ingest request's span (`bridge.server.tracemw`), JSON errors, and
    on an API listener the event-request skeleton, the token (TCP with
    ``auth.token``: every route but the probes) and admission (the event routes).
    """
    limits = sidecar.config.limits
    api = Api(sidecar, listener) if listener != "metrics" else None
    middlewares: list[Middleware] = [request_ids, connection_limits, *traced(), json_errors]
    if api is not None:
        token = sidecar.config.auth.token
        middlewares.append(api.requests)
        if token and listener == "tcp":
            middlewares.append(require_token(BearerAuth(token)))
        middlewares.append(admission(sidecar))
    app = web.Application(middlewares=middlewares, client_max_size=limits.max_body_bytes)
    install_request_ids(app)
    app[SIDECAR] = sidecar
    app[LISTENER] = listener
    # The TCP and Unix listeners share one connection budget; the metrics listener has
    # its own, so probes still answer while API clients hold every slot.
    budget = (
        ConnectionBudget(limits.max_connections, "metrics")
        if listener == "metrics"
        else sidecar.api_connections
    )
    # TCP may not take the slots kept for the Unix socket (the local app's way in).
    reserved = limits.unix_reserved_connections if listener == "tcp" else 0
    app[CONNECTION_GUARD] = ConnectionGuard(
        limits, listener, budget, reserved=reserved, metrics=sidecar.metrics
    )
    if api is None:
        _add_probes(app, sidecar, "tcp")
        return app
    # Timed by `Api.requests`, like every other part of an event request.
    app.router.add_post(EVENTS_PATH, api.post_event)
    app.router.add_post(BATCH_PATH, api.post_batch)
    duration = sidecar.metrics.request_duration
    app.router.add_get("/v1/info", _timed(api.info, duration.labels(listener, "info")))
    app.router.add_get(
        "/v1/openapi.json", _timed(api.openapi, duration.labels(listener, "openapi"))
    )
    add_spool_routes(app, sidecar)
    add_subscribe_routes(app, sidecar)
    _add_probes(app, sidecar, listener)
    return app


def standalone_app(
    config: Config, listener: Literal["tcp", "unix"] = "tcp", *, bus: Bus | None = None
) -> web.Application:
    """An API app that starts its own sidecar on startup and stops it on cleanup.

    ``bus`` (default: a new ``Bus(config)``) is the bus it serves; ``/metrics``
    scrapes that bus's `bridge.metrics.Metrics`.
    """
    sidecar = Sidecar(config, bus)
    app = create_app(sidecar, listener)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await sidecar.start()
        yield
        sidecar.begin_shutdown()
        await sidecar.stop(config.shutdown.grace_s)

    app.cleanup_ctx.append(lifecycle)
    return app
