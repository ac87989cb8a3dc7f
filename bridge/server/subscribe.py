"""``GET /v1/subscribe``: live events as Server-Sent Events, for any language.

One SSE message per event whose processing finished after the stream opened:
``id:`` the event id, ``event:`` its type, ``data:`` the event (every envelope
field) plus its result ``status``. A ``dropped`` message reports how many
events the client missed when it fell ``max_queue`` events or
``max_queue_bytes`` bytes behind, or when all streams together reached
``limits.max_total_subscriber_bytes`` and it was the furthest behind
(``drop_oldest``); with ``overflow=disconnect`` the stream ends instead. What
waits in the socket for a client that does not read is bounded too: a write
takes at most `WRITE_BYTES` of messages (or one), and the next waits until
the socket drains. Comment lines (``: heartbeat``) keep idle streams alive. The stream opens with a
``: subscribed`` comment, sent once the subscription is live, so a client
knows from then on it misses nothing. A client that goes away frees its
subscription within `DISCONNECT_POLL_S`.

``?named=false`` sends every event as an unnamed message (no ``event:``
line), so a browser's ``EventSource.onmessage`` and other generic consumers
see them all; the type is the ``type`` field of ``data`` as always. The
``dropped`` and ``overflow`` notices keep their names either way.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, cast

import msgspec
from aiohttp import web

from bridge.errors import BridgeError
from bridge.event import to_plain
from bridge.server.errors import ApiError
from bridge.server.state import Sidecar
from bridge.subscriptions import (
    OVERFLOW_POLICIES,
    Notice,
    Overflow,
    Subscription,
    SubscriptionOverflow,
)

log = logging.getLogger("bridge.server")

#: How often a waiting stream checks that its client is still connected.
DISCONNECT_POLL_S: Final = 0.25
MAX_PATTERNS: Final = 32
#: Messages per write, in bytes (at least one message): what a stalled client holds
#: outside its queue.
WRITE_BYTES: Final = 256 * 1024
_encoder = msgspec.json.Encoder()


def _number(request: web.Request, name: str, default: float, low: float, high: float) -> float:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise ApiError(
            400, "invalid_query", f"{name} must be a number from {low:g} to {high:g}", field=name
        )
    return value


def _message(notice: Notice, named: bool = True) -> bytes:
    event = notice.event
    data = _encoder.encode({**to_plain(event), "status": notice.status})
    head = b""
    if notice.dropped:
        head = b"event: dropped\ndata: " + _encoder.encode({"dropped": notice.dropped}) + b"\n\n"
    # Ids and types are validated printable text, so they cannot break SSE framing.
    name = f"event: {event.type}\n" if named else ""
    return head + f"id: {event.id}\n{name}".encode() + b"data: " + data + b"\n\n"


def _flag(request: web.Request, name: str, default: bool) -> bool:
    text = request.query.get(name)
    if text is None:
        return default
    value = {"true": True, "1": True, "false": False, "0": False}.get(text.lower())
    if value is None:
        raise ApiError(400, "invalid_query", f"{name} must be true or false", field=name)
    return value


class SubscribeEndpoint:
    """The handler of every API listener; the stream count is shared through the sidecar."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar

    def _options(self, request: web.Request) -> tuple[list[str], int, int, Overflow, float, bool]:
        patterns = request.query.getall("type", []) or ["*"]
        if len(patterns) > MAX_PATTERNS or any(
            not p or not p.isprintable() or len(p) > 256 for p in patterns
        ):
            raise ApiError(
                400,
                "invalid_query",
                f"type takes 1 to {MAX_PATTERNS} printable globs",
                field="type",
            )
        max_queue = int(_number(request, "max_queue", 1000, 1, 100_000))
        # Capped, not refused, above the config's bound: a client asks for "as much as
        # allowed" without knowing the config.
        byte_limit = self.sidecar.config.limits.max_subscriber_bytes
        asked = _number(request, "max_queue_bytes", byte_limit, 1, float("inf"))
        max_queue_bytes = int(min(asked, byte_limit))
        overflow = request.query.get("overflow", "drop_oldest")
        if overflow not in OVERFLOW_POLICIES:
            raise ApiError(
                400,
                "invalid_query",
                f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}",
                field="overflow",
            )
        heartbeat = _number(request, "heartbeat_s", 15.0, 0.05, 300.0)
        named = _flag(request, "named", True)
        return patterns, max_queue, max_queue_bytes, cast(Overflow, overflow), heartbeat, named

    async def handle(self, request: web.Request) -> web.StreamResponse:
        patterns, max_queue, max_queue_bytes, overflow, heartbeat, named = self._options(request)
        sidecar = self.sidecar
        if not sidecar.accepting:
            raise ApiError(503, "shutting_down", "evbridge is not accepting subscriptions now")
        limit = sidecar.config.limits.max_subscribers
        if sidecar.sse_streams >= limit:
            raise ApiError(
                429, "too_many_subscribers", f"limits.max_subscribers ({limit}) streams are open"
            )
        sidecar.sse_streams += 1
        try:
            async with sidecar.bus.subscription(
                *patterns, max_queue=max_queue, overflow=overflow, max_queue_bytes=max_queue_bytes
            ) as sub:
                response = web.StreamResponse(
                    headers={
                        "Content-Type": "text/event-stream",
                        "Cache-Control": "no-cache",
                        "X-Accel-Buffering": "no",
                    }
                )
                await response.prepare(request)
                await response.write(b": subscribed\n\n")
                await self._pump(request, response, sub, heartbeat, named)
                return response
        finally:
            sidecar.sse_streams -= 1

    async def _pump(
        self,
        request: web.Request,
        response: web.StreamResponse,
        sub: Subscription,
        heartbeat: float,
        named: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + heartbeat
        try:
            while self.sidecar.accepting:
                transport = request.transport
                if transport is None or transport.is_closing():
                    return
                wait = min(DISCONNECT_POLL_S, max(0.0, next_beat - loop.time()))
                try:
                    notice = await sub.next(wait)
                except SubscriptionOverflow as exc:
                    await response.write(
                        b"event: overflow\ndata: " + _encoder.encode(exc.to_dict()) + b"\n\n"
                    )
                    return
                if notice is None:
                    if loop.time() >= next_beat:
                        await response.write(b": heartbeat\n\n")
                        next_beat = loop.time() + heartbeat
                    continue
                # Send more of what is queued in the same write, up to WRITE_BYTES: the
                # rest stays in the bounded queue while a slow client's socket drains.
                chunks = [_message(notice, named)]
                size = len(chunks[0])
                while size < WRITE_BYTES and (more := sub.get_nowait()) is not None:
                    chunks.append(_message(more, named))
                    size += len(chunks[-1])
                await response.write(b"".join(chunks))
                next_beat = loop.time() + heartbeat
        except (ConnectionResetError, BridgeError, StopAsyncIteration):
            return


def add_subscribe_routes(app: web.Application, sidecar: Sidecar) -> None:
    """Serve ``GET /v1/subscribe`` on an API listener."""
    app.router.add_get("/v1/subscribe", SubscribeEndpoint(sidecar).handle)
