"""The connection layer: where the limits of `bridge.server.limits` are enforced.

`ConnectionGuard` holds one listener's limits and answers; its `protocol_factory` makes
each accepted connection a `bridge.server._aiohttp.GuardedHandler` within the budget, or a
`_Refusal` (``503`` and close) beyond it. The `connection_limits` middleware tells the
connection's handler where each request starts and ends, which is what its body deadline
and half-close handling need.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

from aiohttp import web

from bridge.config import LimitsConfig
from bridge.metrics import METRICS, Metrics
from bridge.server._aiohttp import (
    GuardedHandler,
    HttpProcessingError,
    LineTooLong,
    unknown_method,
)
from bridge.server.errors import error_response
from bridge.server.limits import (
    MAX_HEADERS,
    MAX_LINE_BYTES,
    BodyTimeout,
    ConnectionBudget,
    Throttled,
    raw_error,
)

log = logging.getLogger("bridge.server")

#: Seconds a refused connection stays half-open so the client can read the 503.
REFUSAL_LINGER_S: Final = 1.0
#: Refused connections lingering at once; beyond this they are closed without an answer.
MAX_LINGERING_REFUSALS: Final = 64

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConnectionGuard:
    """The connection limits of one listener; see `bridge.server.limits`."""

    def __init__(
        self,
        limits: LimitsConfig,
        listener: str,
        budget: ConnectionBudget,
        *,
        reserved: int = 0,
        metrics: Metrics = METRICS,
    ) -> None:
        self.listener = listener
        #: Where refusals and malformed requests are counted (the sidecar's bus's metrics).
        self.metrics = metrics
        self.budget = budget
        #: Slots of ``budget`` this listener may not take (the Unix socket's reserve).
        self.reserved = reserved
        self.header_timeout = limits.header_timeout_s
        self.first_request_timeout = limits.first_request_timeout_s
        self.body_timeout = limits.body_timeout_s
        #: Keyword arguments of every `GuardedHandler` (aiohttp's ``RequestHandler``).
        self.handler_options: dict[str, Any] = {
            "keepalive_timeout": limits.keepalive_timeout_s,
            # Reading (and dropping) an unread body after an early answer, so the
            # connection can be kept alive, never takes longer than the body may.
            "lingering_time": min(limits.body_timeout_s, 10.0),
            "max_line_size": MAX_LINE_BYTES,
            "max_field_size": MAX_LINE_BYTES,
            "max_headers": MAX_HEADERS,
            # evbridge logs one line per outcome itself.
            "access_log": None,
        }
        self.lingering_refusals = 0
        usable = budget.limit - reserved
        kept = (
            f" ({reserved} of them kept for the Unix socket: limits.unix_reserved_connections)"
            if reserved
            else ""
        )
        self.refusal = raw_error(
            503,
            "Service Unavailable",
            "too_many_connections",
            f"{usable} connections are open; limits.max_connections is {budget.limit}{kept}",
        )
        self.header_timeout_answer = raw_error(
            408,
            "Request Timeout",
            "header_timeout",
            f"the request headers did not arrive within limits.header_timeout_s "
            f"({self.header_timeout:g}s)",
        )
        self.first_request_timeout_answer = raw_error(
            408,
            "Request Timeout",
            "header_timeout",
            f"no complete request headers within limits.first_request_timeout_s "
            f"({self.first_request_timeout:g}s) of connecting",
        )
        self._expect_counter = metrics.errors.labels("ingest", "expectation_failed")
        self._refused_counter = metrics.errors.labels("accept", "too_many_connections")
        self._header_counter = metrics.errors.labels("ingest", "header_timeout")
        self.log_refused = Throttled(
            logging.WARNING,
            f"{listener}: connection refused: {usable} connections are open "
            f"(limits.max_connections {budget.limit}{kept})",
        )
        self.log_header_timeout = Throttled(
            logging.INFO,
            f"{listener}: connection closed: request headers took longer than "
            f"limits.header_timeout_s ({self.header_timeout:g}s) or "
            f"limits.first_request_timeout_s ({self.first_request_timeout:g}s)",
        )
        self.log_expectation = Throttled(
            logging.INFO, f"{listener}: request refused with 417: unsupported Expect header"
        )

    def protocol_factory(self, server: web.Server) -> Callable[[], asyncio.BaseProtocol]:
        """The factory for ``loop.create_server``: a `GuardedHandler` within the budget,
        a `_Refusal` beyond it."""
        loop = asyncio.get_running_loop()
        budget = self.budget

        reserved = self.reserved

        def make() -> asyncio.BaseProtocol:
            if not budget.take(reserved):
                self._refused_counter.inc()
                self.log_refused(listener=self.listener, limit=budget.limit)
                return _Refusal(self, loop)
            return GuardedHandler(server, self, loop=loop, **self.handler_options)

        return make

    # --- what each connection's `GuardedHandler` asks (`ConnectionPolicy`) -------------

    def release(self) -> None:
        self.budget.give_back()

    def header_timed_out(self) -> None:
        self._header_counter.inc()
        self.log_header_timeout(listener=self.listener)

    def body_timed_out(self) -> BaseException:
        return BodyTimeout(self.body_timeout)

    def protocol_error(
        self, status: int, exc: BaseException | None, message: str | None
    ) -> web.StreamResponse:
        """Malformed requests (and unexpected failures) as the standard JSON error body."""
        method = unknown_method(exc)
        if method is not None:
            # A method this server does not know is 501 (RFC 9110 §9.1), not a malformed request.
            status, code = 501, "not_implemented"
            text = f"method {method!r} is not implemented by this server"
        elif isinstance(exc, LineTooLong):
            status, code = 431, "header_too_large"
            text = f"the request line or a header line is over {MAX_LINE_BYTES} bytes"
        elif isinstance(exc, HttpProcessingError):
            code = "bad_request"
            text = f"malformed HTTP request: {exc.message}"
        elif status == 500:
            code, text = "internal_error", "evbridge failed to answer; see its log"
            log.error("unexpected error answering a request", exc_info=exc)
        else:
            code, text = "http_error", message or "the request failed"
        self.metrics.error("ingest", code)
        if status != 500:
            log.info(
                "%s: malformed HTTP request answered with %d %s: %s",
                self.listener,
                status,
                code,
                text,
                extra={"status": status, "code": code, "listener": self.listener},
            )
        response = error_response(status, code, text)
        response.force_close()
        return response

    def expectation_failed(self, expect: str) -> web.Response:
        self._expect_counter.inc()
        self.log_expectation(listener=self.listener, expect=expect[:64])
        response = error_response(
            417,
            "expectation_failed",
            f"unsupported Expect: {expect[:64]!r}; only 100-continue is supported",
            field="Expect",
        )
        response.force_close()
        return response


#: Every API app's guard (the runner's site finds it here).
CONNECTION_GUARD: Final = web.AppKey("connection_guard", ConnectionGuard)


class _Refusal(asyncio.Protocol):
    """A connection over the limit: answer 503, linger briefly so the answer is read, close."""

    def __init__(self, guard: ConnectionGuard, loop: asyncio.AbstractEventLoop) -> None:
        self.guard = guard
        self.loop = loop
        self.timer: asyncio.TimerHandle | None = None
        self.lingering = False

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's are not asyncio.Transport subclasses
        guard = self.guard
        if guard.lingering_refusals >= MAX_LINGERING_REFUSALS:
            transport.abort()  # a flood: keep nothing open for it
            return
        transport.write(guard.refusal)
        if transport.can_write_eof():
            # Half-close and keep reading briefly: closing with unread request bytes
            # would reset the connection and could destroy the answer before it is read.
            transport.write_eof()
            guard.lingering_refusals += 1
            self.lingering = True
            self.timer = self.loop.call_later(REFUSAL_LINGER_S, transport.close)
        else:
            transport.close()

    def data_received(self, data: bytes) -> None:
        pass  # whatever the refused client sends is dropped

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.lingering:
            self.guard.lingering_refusals -= 1
            self.lingering = False


@web.middleware
async def connection_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tell the connection's `GuardedHandler` where each request starts and ends."""
    protocol = request.protocol
    if not isinstance(protocol, GuardedHandler):  # embedded apps, aiohttp's test server
        return await handler(request)
    protocol.request_started(request)
    try:
        response = await handler(request)
    finally:
        close = protocol.request_done()
    if close:
        response.force_close()
    return response
