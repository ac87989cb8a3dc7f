"""The one place the server depends on aiohttp's internals.

aiohttp has no public hook for the protocol of a new connection, for the moment a request's
headers are parsed, or for answering ``Expect: 100-continue`` after the handler's own
checks; the server needs all three (`bridge.server.connections`). Everything that relies on
aiohttp beyond its documented API is here, so an aiohttp upgrade is checked in one module,
by tests/unit/test_aiohttp_internals.py, within the bound in pyproject.toml.

Checked against aiohttp 3.14.5 (installed); pyproject.toml bounds it ``>=3.14,<3.15``: 3.14
is the first release with ``web.RequestKey``, which the server's request state uses. What is
used, and where aiohttp defines it:

- ``aiohttp.http_exceptions``: ``BadHttpMethod``, ``ContentEncodingError``,
  ``HttpProcessingError`` (and its ``message``), ``LineTooLong`` — not re-exported by
  ``aiohttp``. (`bridge.logs` imports ``HttpProcessingError`` from there too, for its log
  filter; it sits below the server and cannot import this module.)
- ``aiohttp.http_writer.HttpVersion11``.
- ``aiohttp.compression_utils.HAS_BROTLI`` and ``HAS_ZSTD``: which codings aiohttp decodes.
- ``web.RequestHandler`` (``aiohttp.web_protocol``), subclassed by `GuardedHandler`: its
  constructor's keywords (``loop`` and the limits in ``ConnectionGuard.handler_options``),
  ``__slots__``, the asyncio protocol methods it overrides (``connection_made``,
  ``data_received``, ``eof_received``, ``connection_lost``), ``handle_error``'s signature,
  ``force_close``/``close``/``transport``, and two private attributes: ``_messages`` (the
  queue of parsed requests, read for its length) and ``_request_handler`` (the callable each
  request is handed to, wrapped for ``Expect``).
- The llhttp parser's error text for an unknown method (`unknown_method`), read because
  llhttp refuses a method it does not know with the same ``BadHttpMethod`` as garbage.
- ``web.SockSite`` (``aiohttp.web_runner``), subclassed by `GuardedSite`: the private
  ``_runner``, ``_sock``, ``_backlog`` and ``_server`` it sets in its constructor.
- ``request.writer.output_size`` reset to 0 after writing ``100 Continue``, as aiohttp's own
  expect handler (``web_urldispatcher._default_expect_handler``) does.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from aiohttp import hdrs, web
from aiohttp.compression_utils import HAS_BROTLI, HAS_ZSTD
from aiohttp.http_exceptions import (
    BadHttpMethod,
    ContentEncodingError,
    HttpProcessingError,
    LineTooLong,
)
from aiohttp.http_writer import HttpVersion11
from multidict import CIMultiDict

__all__ = [
    "EXPECTS_CONTINUE",
    "HAS_BROTLI",
    "HAS_ZSTD",
    "BadHttpMethod",
    "ConnectionPolicy",
    "ContentEncodingError",
    "GuardedHandler",
    "GuardedSite",
    "HttpProcessingError",
    "HttpVersion11",
    "LineTooLong",
    "send_continue",
    "unknown_method",
]

BaseHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
ProtocolFactory = Callable[[web.Server], Callable[[], asyncio.BaseProtocol]]

#: A well-formed request line whose method llhttp does not know (it refuses those itself).
_UNKNOWN_METHOD: Final = re.compile(
    r"""b(['"])([!#$%&*+.^_`|~0-9A-Za-z-]{1,32}) \S+ HTTP/1\.[01]\1"""
)
#: Request state: True while the client waits for ``100 Continue`` (see `send_continue`).
EXPECTS_CONTINUE: Final = web.RequestKey("expects_continue", bool)
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


def unknown_method(exc: BaseException | None) -> str | None:
    """The method of a well-formed request line llhttp refused only for its method."""
    if not isinstance(exc, BadHttpMethod):
        return None
    found = _UNKNOWN_METHOD.search(str(exc))
    return found.group(2) if found is not None else None


class ConnectionPolicy(Protocol):
    """What a `GuardedHandler` needs from its listener's limits (a ``ConnectionGuard``)."""

    @property
    def first_request_timeout(self) -> float: ...
    @property
    def header_timeout(self) -> float: ...
    @property
    def body_timeout(self) -> float: ...
    @property
    def first_request_timeout_answer(self) -> bytes: ...
    @property
    def header_timeout_answer(self) -> bytes: ...

    def release(self) -> None:
        """The connection is gone: give its slot back."""

    def header_timed_out(self) -> None:
        """Count and log a connection closed for slow headers."""

    def body_timed_out(self) -> BaseException:
        """The error a body read fails with once the body deadline passed."""

    def expectation_failed(self, expect: str) -> web.StreamResponse:
        """The answer to an ``Expect`` other than ``100-continue``."""

    def protocol_error(
        self, status: int, exc: BaseException | None, message: str | None
    ) -> web.StreamResponse:
        """The answer to a request aiohttp could not parse (or failed to answer)."""


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
        guard: ConnectionPolicy,
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
            self._guard.release()
        super().connection_lost(exc)

    # --- request boundaries (from the ``connection_limits`` middleware) ---------------

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
        payload.set_exception(self._guard.body_timed_out())
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
        """Malformed requests (and unexpected failures) answered by the guard."""
        if request.writer.output_size > 0:
            # Part of an answer is out: nothing valid can follow. aiohttp closes the connection.
            raise ConnectionError("the response was already started; cannot send the error")
        return self._guard.protocol_error(status, exc, message)


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


class GuardedSite(web.SockSite):
    """A `web.SockSite` whose connections are made by ``protocols`` (a
    ``ConnectionGuard.protocol_factory``) instead of by the runner's server.

    aiohttp has no hook for the protocol of a new connection: the site hands its server
    to ``loop.create_server`` as the factory. This site hands over the guard's factory,
    which enforces ``limits.max_connections`` and the header/body deadlines. It reuses
    `web.SockSite`'s socket, backlog and stop; tests/integration/test_abuse_clients.py
    pins that it still works.
    """

    __slots__ = ("_protocols",)

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        protocols: ProtocolFactory,
        *,
        backlog: int,
    ) -> None:
        super().__init__(runner, sock, backlog=backlog)
        self._protocols = protocols

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocols(server), sock=self._sock, backlog=self._backlog
        )
