"""``POST /v1/spool/dead-letters/replay``: what ``evbridge spool replay-dead-letters``
calls while the sidecar runs (the sidecar owns the spool; no other process may write it)."""

from __future__ import annotations

import msgspec
from aiohttp import web

from bridge.errors import SpoolError
from bridge.server._aiohttp import send_continue
from bridge.server.errors import ApiError, json_response, status_for
from bridge.server.paths import REPLAY_PATH
from bridge.server.state import Sidecar


class _ReplayRequest(msgspec.Struct, forbid_unknown_fields=True):
    sink: str | None = None


_decode = msgspec.json.Decoder(_ReplayRequest).decode


def add_spool_routes(app: web.Application, sidecar: Sidecar) -> None:
    """Add the spool administration endpoints to an API listener's app."""

    async def replay(request: web.Request) -> web.Response:
        if not sidecar.bus.has_spool:
            raise ApiError(404, "not_found", "durable delivery is not configured: no spool")
        await send_continue(request)
        body = await request.read()
        try:
            # Only a truly empty body means "all sinks"; whitespace is malformed JSON.
            wanted = _decode(body) if body else _ReplayRequest()
        except msgspec.DecodeError as exc:
            raise ApiError(400, "invalid_json", f'expected {{"sink": NAME}}: {exc}') from None
        try:
            moved = await sidecar.bus.replay_dead_letters(wanted.sink)
        except SpoolError as exc:
            raise ApiError(status_for(exc), exc.code, exc.message) from None
        return json_response({"replayed": moved})

    app.router.add_post(REPLAY_PATH, replay)
