"""Connection-level limits: how many connections, and how long a request may take to arrive.

aiohttp bounds header sizes and (with ``client_max_size``) body sizes, but not
time: a client trickling bytes keeps its connection, and a slot, for as long as
it likes; nor does it bound the number of open connections. `ConnectionGuard`
adds both, per listener, without touching the event path:

- **max_connections**: the protocol factory (``ConnectionGuard.protocol_factory`` in
  `bridge.server.connections`, given to ``loop.create_server`` by ``GuardedSite``)
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
the same JSON error body as every other error (`ConnectionGuard.protocol_error`).

``Expect: 100-continue`` is answered lazily: ``100 Continue`` goes out only
when a handler starts reading the body (``_aiohttp.send_continue``), so a request the
headers already decide (401, 413, 415, 429, 503) gets its final status at
once and the client never sends the body. Any other expectation gets ``417``
JSON (``expectation_failed``).
"""

from __future__ import annotations

import logging
from time import monotonic
from typing import Any, Final

import msgspec

from bridge.server.errors import RETRY_AFTER_S, ApiError, error_body

log = logging.getLogger("bridge.server")

#: aiohttp's limits on one request line and one header line (bytes), kept explicit here.
MAX_LINE_BYTES: Final = 8190
MAX_HEADERS: Final = 128
#: Seconds between two log lines about the same kind of limit being hit.
LOG_INTERVAL_S: Final = 10.0


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


def raw_error(status: int, reason: str, code: str, message: str) -> bytes:
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
