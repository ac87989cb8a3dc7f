"""Connection-level limits: how many connections, and how long a request may take to arrive.

aiohttp bounds header sizes and (with ``client_max_size``) body sizes, but not
time: a client trickling bytes keeps its connection, and a slot, for as long as
it likes; nor does it bound the number of open connections. `ConnectionGuard`
adds both, per listener, without touching the event path:

- **max_connections**: the protocol factory (`ConnectionGuard.protocol_factory`,
  given to ``loop.create_server`` by `bridge.server.listeners.GuardedSite`)
  takes a slot from a `ConnectionBudget` for every accepted connection and
  gives it back when the connection is lost. Over the limit, the connection
  gets a ``503`` JSON error with ``Retry-After`` and is closed
  (``evbridge_errors{stage="accept",error_type="too_many_connections"}``).
  The TCP and Unix listeners share one budget; the metrics listener has its
  own, so probes are never refused because API clients hold every slot.
  ``unix_reserved_connections`` of the shared slots are the Unix socket's
  alone: TCP connections are refused once only those are left, so no TCP
  client, however many connections it opens, locks the local app out.
- **first_request_timeout_s**: from accepting a connection to the end of its
  first request's headers, so a connection that never sends a byte holds its
  slot for seconds, not for the keep-alive timeout. Over it: ``408`` JSON
  (``header_timeout``) and close.
- **header_timeout_s**: from the first byte of a later request on a
  keep-alive connection to the end of its headers. Over it: ``408`` JSON
  (``header_timeout``) and close.
- **body_timeout_s**: from the end of the headers to the end of the body.
  Over it, the body read fails with `BodyTimeout`: the API answers ``408``
  JSON (``body_timeout``), the event is not processed, and the connection closes.
- **keepalive_timeout_s**: how long an idle keep-alive connection stays open.

A client that closes its side after sending a complete request (a half-close,
or a close without waiting for the answer) still has that request processed to
the end, as if it were there to read the answer; one that closes before its
body ended has nothing processed (``400 incomplete_body``).

Protocol-level errors (bad request line, header line over the size limit) get
the same JSON error body as every other error (`GuardedHandler.handle_error`).

``Expect: 100-continue`` is answered lazily: ``100 Continue`` goes out only
when a handler starts reading the body (`send_continue`), so a request the
headers already decide (401, 413, 415, 429, 503) gets its final status at
once and the client never sends the body. Any other expectation gets ``417``
JSON (``expectation_failed``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from time import monotonic
from typing import Any, Final, cast

import msgspec
from aiohttp import hdrs, web
from multidict import CIMultiDict

from bridge.config import LimitsConfig
from bridge.metrics import METRICS
from bridge.server._aiohttp import BadHttpMethod, HttpProcessingError, HttpVersion11, LineTooLong
from bridge.server.errors import RETRY_AFTER_S, ApiError, error_body, error_response

log = logging.getLogger("bridge.server")

#: aiohttp's limits on one request line and one header line (bytes), kept explicit here.
MAX_LINE_BYTES: Final = 8190
MAX_HEADERS: Final = 128
#: Seconds a refused connection stays half-open so the client can read the 503.
REFUSAL_LINGER_S: Final = 1.0
#: Refused connections lingering at once; beyond this they are closed without an answer.
MAX_LINGERING_REFUSALS: Final = 64
#: Seconds between two log lines about the same kind of limit being hit.
LOG_INTERVAL_S: Final = 10.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: A well-formed request line whose method llhttp does not know (it refuses those itself).
_UNKNOWN_METHOD: Final = re.compile(
    r"""b(['"])([!#$%&*+.^_`|~0-9A-Za-z-]{1,32}) \S+ HTTP/1\.[01]\1"""
)
BaseHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

#: Request state: True while the client waits for ``100 Continue`` (see `send_continue`).
EXPECTS_CONTINUE: Final = "evbridge.expects_continue"
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class BodyTimeout(ApiError):
    """The request body did not arrive within ``limits.body_timeout_s``: 408."""

    def __init__(self, timeout: float) -> None:
        super().__init__(
            408,
            "body_timeout",
            f"the request body did not arrive within limits.body_timeout_s ({timeout:g}s)",
        )


class Throttled:
    """Logs one line for the first occurrence, then at most one per `LOG_INTERVAL_S`
    (with the count of those left out), so a client repeating a refused request
    cannot flood the log."""

    def __init__(self, level: int, message: str) -> None:
        self.level, self.message = level, message
        self.suppressed = 0
        self.last = -LOG_INTERVAL_S

    def __call__(self, **extra: Any) -> None:
        now = monotonic()
        if now - self.last < LOG_INTERVAL_S:
            self.suppressed += 1
            return
        more = f" ({self.suppressed} more since the last report)" if self.suppressed else ""
        log.log(self.level, self.message + more, extra={**extra, "suppressed": self.suppressed})
        self.last, self.suppressed = now, 0


def _raw_error(status: int, reason: str, code: str, message: str) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 error response, for connections that have
    no request aiohttp could answer (refused, or headers that never ended)."""
    body = msgspec.json.encode(error_body(code, message))
    retry = f"Retry-After: {RETRY_AFTER_S}\r\n" if status in (429, 503) else ""
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{retry}Connection: close\r\n\r\n"
    )
    return head.encode() + body


class ConnectionBudget:
    """Open connections of one pool, bounded by ``limit``."""

    def __init__(self, limit: int, pool: str) -> None:
        self.limit = limit
        self.pool = pool
        self.open = 0

    def take(self, reserved: int = 0) -> bool:
        """Take a slot unless only ``reserved`` (kept for other listeners) or none are left."""
        if self.open >= self.limit - reserved:
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        self.open -= 1


class ConnectionGuard:
    """The connection limits of one listener; see the module docstring."""

    def __init__(
        self,
        limits: LimitsConfig,
        listener: str,
        budget: ConnectionBudget,
        *,
        reserved: int = 0,
    ) -> None:
        self.listener = listener
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
        self.refusal = _raw_error(
            503,
            "Service Unavailable",
            "too_many_connections",
            f"{usable} connections are open; limits.max_connections is {budget.limit}{kept}",
        )
        self.header_timeout_answer = _raw_error(
            408,
            "Request Timeout",
            "header_timeout",
            f"the request headers did not arrive within limits.header_timeout_s "
            f"({self.header_timeout:g}s)",
        )
        self.first_request_timeout_answer = _raw_error(
            408,
            "Request Timeout",
            "header_timeout",
            f"no complete request headers within limits.first_request_timeout_s "
            f"({self.first_request_timeout:g}s) of connecting",
        )
        self._expect_counter = METRICS.errors.labels("ingest", "expectation_failed")
        self._refused_counter = METRICS.errors.labels("accept", "too_many_connections")
        self._header_counter = METRICS.errors.labels("ingest", "header_timeout")
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

    def header_timed_out(self) -> None:
        self._header_counter.inc()
        self.log_header_timeout(listener=self.listener)

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


class GuardedHandler(web.RequestHandler):
    """aiohttp's HTTP protocol plus header/body deadlines, half-close handling,
    the connection budget, and JSON bodies for protocol-level errors."""

    __slots__ = (
        "_active",
        "_body_timer",
        "_client_eof",
        "_first_request",
        "_guard",
        "_guard_loop",
        "_header_timer",
        "_slot_held",
        "_undispatched",
    )

    def __init__(
        self,
        manager: web.Server,
        guard: ConnectionGuard,
        *,
        loop: asyncio.AbstractEventLoop,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._guard = guard
        self._guard_loop = loop
        self._slot_held = True
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        #: The request whose handler is running (between `request_started` and `request_done`).
        self._active: web.BaseRequest | None = None
        #: The client closed its side; answer what was fully received, then close.
        self._client_eof = False
        #: Requests parsed whose handler has not started yet.
        self._undispatched = 0
        #: No request has started on this connection yet (its deadline runs from accept).
        self._first_request = True
        handler = self._request_handler
        assert handler is not None
        self._request_handler = self._with_expectations(handler)

    # --- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # From accept, not from the first byte: a connection that never sends must not
        # hold its slot until the keep-alive timeout.
        self._header_timer = self._guard_loop.call_later(
            self._guard.first_request_timeout, self._headers_too_slow
        )

    def data_received(self, data: bytes) -> None:
        if data and self._active is None and self._header_timer is None:
            self._header_timer = self._guard_loop.call_later(
                self._guard.header_timeout, self._headers_too_slow
            )
        # aiohttp parses synchronously into its queue of requests (``_messages``), and
        # only its own task takes them out, never during this call: the growth is
        # what this data completed.
        queued = len(self._messages)
        super().data_received(data)
        self._undispatched += max(0, len(self._messages) - queued)

    # asyncio's signature: True keeps the transport open (aiohttp's always closes).
    def eof_received(self) -> bool | None:  # type: ignore[override]
        active = self._active
        if active is not None:
            if active.body_exists and active.content.is_eof():
                self._client_eof = True
                return True  # the request is complete: keep the write side for its answer
            # Mid-body: aiohttp's disconnect path (400 incomplete_body). Without a body
            # (say, an event stream), EOF means the client left: close as aiohttp does.
            return super().eof_received()
        if self._undispatched:
            # A request was parsed and its handler has not started: `request_started`
            # decides (answer it if its body is complete, 400 incomplete_body if not).
            self._client_eof = True
            return True
        # No request is waiting: whatever head arrived can never be completed now.
        return super().eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timers()
        if self._slot_held:
            self._slot_held = False
            self._guard.budget.give_back()
        super().connection_lost(exc)

    # --- request boundaries (from `connection_limits`) --------------------------------

    def request_started(self, request: web.BaseRequest) -> None:
        """The headers of ``request`` are in and its handler starts."""
        self._undispatched = max(0, self._undispatched - 1)
        self._first_request = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._active = request
        payload = request.content
        if payload.is_eof():
            return
        if self._client_eof:
            # The client closed before the body ended: it never will. Fail the read now
            # (400 incomplete_body) rather than waiting out the body timeout.
            payload.set_exception(
                ConnectionResetError("the client closed the connection before the body ended")
            )
            payload.feed_eof()  # nothing left to drain after the answer
            return
        self._body_timer = self._guard_loop.call_later(
            self._guard.body_timeout, self._body_too_slow
        )

    def request_done(self) -> bool:
        """The handler returned; True if the connection must close after its answer."""
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._active = None
        return self._client_eof

    # --- deadlines --------------------------------------------------------------------

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        transport = self.transport
        if self._active is not None or transport is None:
            return
        guard = self._guard
        guard.header_timed_out()
        if not self._client_eof:
            transport.write(
                guard.first_request_timeout_answer
                if self._first_request
                else guard.header_timeout_answer
            )
        self.force_close()

    def _body_too_slow(self) -> None:
        self._body_timer = None
        request = self._active
        if request is None or request.content.is_eof():
            return
        # Stop parsing this connection (what still arrives is dropped), fail the body
        # read so the handler answers 408, and mark the body ended so aiohttp does not
        # wait to drain it: the connection closes after the answer.
        self.close()
        payload = request.content
        payload.set_exception(BodyTimeout(self._guard.body_timeout))
        payload.feed_eof()

    # --- Expect -------------------------------------------------------------------------

    def _with_expectations(self, handler: BaseHandler) -> BaseHandler:
        """``handler`` with the ``Expect`` header taken over from aiohttp, whose routes send
        ``100 Continue`` before any handler could refuse the request."""
        guard = self._guard

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            expect = request.headers.get(hdrs.EXPECT)
            # HTTP/1.0 has no expectations: RFC 9110 §10.1.1 says to ignore the header.
            if expect is None or request.version < HttpVersion11:
                return await handler(request)
            if expect.strip().lower() != "100-continue":
                return guard.expectation_failed(expect)
            headers = CIMultiDict(request.headers)
            del headers[hdrs.EXPECT]
            request = request.clone(headers=headers)
            request[EXPECTS_CONTINUE] = True
            response = await handler(request)
            if request.get(EXPECTS_CONTINUE) and request.body_exists:
                # The client holds its body back until 100 Continue, which now never
                # comes: the connection cannot be reused (RFC 9110 §10.1.1).
                response.force_close()
            return response

        return handle

    # --- protocol-level errors ------------------------------------------------------------

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Malformed requests (and unexpected failures) as the standard JSON error body."""
        if request.writer.output_size > 0:
            # Part of an answer is out: nothing valid can follow. aiohttp closes the connection.
            raise ConnectionError("the response was already started; cannot send the error")
        unknown = _UNKNOWN_METHOD.search(str(exc)) if isinstance(exc, BadHttpMethod) else None
        if unknown is not None:
            # A method this server does not know is 501 (RFC 9110 §9.1), not a malformed request.
            status, code = 501, "not_implemented"
            text = f"method {unknown.group(2)!r} is not implemented by this server"
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
        METRICS.error("ingest", code)
        if status != 500:
            log.info(
                "%s: malformed HTTP request answered with %d %s: %s",
                self._guard.listener,
                status,
                code,
                text,
                extra={"status": status, "code": code, "listener": self._guard.listener},
            )
        response = error_response(status, code, text)
        response.force_close()
        return response


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


async def send_continue(request: web.BaseRequest) -> None:
    """Send ``100 Continue`` if the client waits for it before sending its body.

    Call it right before reading the body, after every check the headers decide.
    """
    if request.get(EXPECTS_CONTINUE):
        request[EXPECTS_CONTINUE] = False
        writer = request.writer
        await writer.write(_CONTINUE)
        # The final answer's head is still to come (as aiohttp's own expect handler does).
        writer.output_size = 0
