"""What every request passes before its handler: the token, and admission of event requests.

Two middlewares, so a handler cannot forget either:

- `require_token` (the TCP listener, when ``auth.token`` is set): every route needs
  ``Authorization: Bearer <token>`` except the probes (`OPEN_PATHS`), so probes and
  scrapers need no secret. A request no route matches gets its ``404``/``405`` as it
  would without a token.
- `admission` (the event routes, `INGEST_PATHS`): before the body is read, one in-flight
  event and the body's bytes are reserved under ``limits.max_inflight`` and
  ``limits.max_inflight_bytes`` (``429 overloaded``; ``503`` unless running); the handler
  adjusts the reservation through its `Ticket`, and the middleware gives it all back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from aiohttp import web

from bridge.server.auth import BearerAuth
from bridge.server.paths import BATCH_PATH, EVENTS_PATH, PROBE_PATHS
from bridge.server.state import Sidecar

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Middleware(Protocol):
    """An aiohttp middleware (what ``web.Application(middlewares=...)`` takes)."""

    def __call__(self, request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
        """Answer ``request``, calling ``handler`` to go on."""


#: Routes anyone may call, token or not.
OPEN_PATHS: Final = frozenset(PROBE_PATHS)
#: Routes whose requests carry events: admitted under the in-flight limits.
INGEST_PATHS: Final = frozenset({EVENTS_PATH, BATCH_PATH})


def route_path(request: web.BaseRequest) -> str | None:
    """The path of the route ``request`` matched; None when no route did (404, 405)."""
    match = getattr(request, "match_info", None)
    if match is None or match.http_exception is not None:
        return None
    resource = match.route.resource
    return resource.canonical if resource is not None else None


def require_token(auth: BearerAuth) -> Middleware:
    """A middleware refusing every route but `OPEN_PATHS` without the token: 401."""

    @web.middleware
    async def token(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = route_path(request)
        if path is not None and path not in OPEN_PATHS:
            auth.check(request.headers)
        return await handler(request)

    return token


class Ticket:
    """The in-flight events and body bytes one event request holds under the limits."""

    __slots__ = ("events", "sidecar", "size")

    def __init__(self, sidecar: Sidecar, size: int) -> None:
        sidecar.admit(1, size)
        self.sidecar = sidecar
        self.events = 1
        self.size = size

    def settle(self, body: bytes) -> None:
        """The body is read: give back the bytes reserved for it that it did not use."""
        if len(body) < self.size:
            self.sidecar.release(0, self.size - len(body))
            self.size = len(body)

    def grow(self, events: int) -> None:
        """Hold ``events`` in-flight events (a batch, once decoded), or raise 429."""
        if events > self.events:
            self.sidecar.admit(events - self.events)
            self.events = events

    def release(self) -> None:
        self.sidecar.release(self.events, self.size)
        self.events = self.size = 0


#: Request state: the `Ticket` of an admitted event request.
_TICKET: Final = web.RequestKey("ticket", Ticket)


def ticket(request: web.Request) -> Ticket:
    """The `Ticket` `admission` gave ``request``."""
    return request[_TICKET]


def admission(sidecar: Sidecar) -> Middleware:
    """A middleware admitting each request of `INGEST_PATHS` before its handler runs."""
    max_body = sidecar.config.limits.max_body_bytes

    @web.middleware
    async def admit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if route_path(request) not in INGEST_PATHS:
            return await handler(request)
        # Reserved before the body is read: its Content-Length, or max_body_bytes when the
        # size is not known ahead (chunked, or compressed: the limit is on the decoded body).
        length = request.content_length
        if length is None or "Content-Encoding" in request.headers:
            size = max_body
        else:
            size = min(length, max_body)
        held = request[_TICKET] = Ticket(sidecar, size)
        try:
            return await handler(request)
        finally:
            held.release()

    return admit
