"""The ingest request's span (`bridge.tracing`), as an aiohttp middleware.

Installed only while tracing is on (`create_app` checks once), so a bridge without
tracing runs no code of it at all. The span is a child of the request's W3C
``traceparent``; the event spans of the request nest under it (one event) or link
to it (a batch).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from bridge import tracing
from bridge.server.gate import INGEST_PATHS, Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The ingest endpoints; other paths (probes, spool admin, subscriptions) get no span.
TRACED_PATHS: Final = INGEST_PATHS


def traced() -> list[Middleware]:
    """The middleware to install: none while tracing is off."""
    return [] if tracing.TRACER is None else [trace_requests]


@web.middleware
async def trace_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run ``handler`` in a SERVER span for the ingest endpoints."""
    tracer = tracing.TRACER
    if tracer is None or request.path not in TRACED_PATHS:
        return await handler(request)
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind, StatusCode, use_span

    span = tracer.start_span(
        f"{request.method} {request.path}",
        context=extract(request.headers),
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": request.method,
            "url.path": request.path,
            "http.route": request.path,
        },
    )
    with use_span(span, end_on_exit=True, record_exception=True, set_status_on_exception=True):
        response = await handler(request)
        span.set_attribute("http.response.status_code", response.status)
        if response.status >= 500:
            span.set_status(StatusCode.ERROR)
        return response
