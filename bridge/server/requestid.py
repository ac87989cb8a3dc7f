"""Request ids: one per request, echoed in ``X-Request-Id`` and on every log line.

An incoming ``X-Request-Id`` is kept when it is 1-128 characters of
``[A-Za-z0-9._:/+=@-]`` (so it is safe in logs and headers); otherwise the
bridge makes one up (16 hex digits). The id is set in `bridge.logs.REQUEST_ID`
for as long as the request is handled, so every log line written meanwhile
(by the bridge, a handler or a library, in the request's task or tasks it
starts) carries ``request_id``; the response, errors included, carries the
``X-Request-Id`` header.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from random import getrandbits
from typing import Final

from aiohttp import web

from bridge.logs import REQUEST_ID

HEADER: Final = "X-Request-Id"
MAX_LEN: Final = 128
_SAFE: Final = re.compile(rf"[A-Za-z0-9._:/+=@-]{{1,{MAX_LEN}}}\Z")
_KEY: Final = web.RequestKey("request_id", str)


def request_id_for(incoming: str | None) -> str:
    """``incoming`` when it is a sane id, else a fresh one."""
    if incoming is not None and _SAFE.match(incoming):
        return incoming
    return f"{getrandbits(64):016x}"


@web.middleware
async def request_ids(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Give the request its id for the duration of its handling."""
    rid = request_id_for(request.headers.get(HEADER))
    request[_KEY] = rid
    token = REQUEST_ID.set(rid)
    try:
        return await handler(request)
    finally:
        REQUEST_ID.reset(token)


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the response carries the request's id (streams too)."""
    rid = request.get(_KEY)
    if rid is None:  # answered before the middleware ran (e.g. no route at all)
        rid = request_id_for(request.headers.get(HEADER))
    response.headers[HEADER] = rid


def install(app: web.Application) -> None:
    """Echo request ids on ``app``'s responses; pass `request_ids` as its outermost middleware."""
    app.on_response_prepare.append(echo_request_id)
